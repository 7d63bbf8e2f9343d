"""The trust funnel's pure core: layers, drip scheduling and promotion rules."""
