"""Opens and clicks: signed tokens, the pixel and the click redirect, and the batched event writer."""
