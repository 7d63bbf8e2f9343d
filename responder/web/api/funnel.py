"""Admin API of the trust funnel: layers, sequences and steps, manual moves, the preferred tag.

Newsletters, webhooks and stats are in ``api/campaigns.py``. Handlers only read input, call
the service functions in ``responder.sequences`` and answer JSON.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import select

from ...errors import NotFound
from ...funnel import abtests
from ...funnel import layers as layers
from ...funnel import sequences as sequences
from ...funnel.scheduler import moves_json, sweep_on_demand
from ...models import LayerHistory
from ...validation import MAX_ID, parse_id
from ..http import read_input, runtime
from .handlers import PREFIX, history_json, layer_json
from .openapi import AB_TEST_REF, AB_VARIANTS_IN, AB_WINNER_IN, describe, error, json_body

routes = web.RouteTableDef()
ID = {"type": "integer", "minimum": 1}
OBJECT = {"type": "object"}


def path_int(request: web.Request, name: str) -> int:
    value = parse_id(request.match_info[name])
    if value is None:
        raise NotFound(f"no such {name}")
    return value


def params(*names: str) -> list[dict[str, Any]]:
    return [{"name": n, "in": "path", "required": True, "schema": ID} for n in names]


def body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


async def _layers_body(session: Any) -> dict[str, Any]:
    counts = await layers.counts(session)
    return {"layers": [layer_json(layer, counts.get(layer.id, 0)) for layer in await layers.active_layers(session)]}


LAYERS_OUT = {
    "200": json_body({"type": "object", "properties": {"layers": {"type": "array"}}}),
    "400": error("invalid input, or the 4..7 layer limit"),
}
LAYER_IN = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 120},
        "label": {"type": "string", "maxLength": 60},
        "description": {"type": "string"},
        "position": {"type": "integer"},
        "rule": {"type": "object", "description": "see docs/rules.md"},
    },
}


@routes.post(PREFIX + "/layers")
async def create_layer(request: web.Request) -> web.Response:
    rt = runtime(request)
    data = await read_input(request)
    async with rt.db.transaction() as session:
        await layers.create_layer(session, data, rt.clock.now())
        return web.json_response(await _layers_body(session), status=201)


describe(
    PREFIX + "/layers",
    "post",
    {
        "summary": "Add a layer (at most 7) at a position (default: the top), with an empty main sequence",
        "requestBody": body({**LAYER_IN, "required": ["name", "label"]}),
        "responses": {**LAYERS_OUT, "201": LAYERS_OUT["200"]},
    },
)


@routes.patch(PREFIX + "/layers/{position}")
async def update_layer(request: web.Request) -> web.Response:
    rt = runtime(request)
    data = await read_input(request)
    async with rt.db.transaction() as session:
        await layers.update_layer(session, path_int(request, "position"), data)
        return web.json_response(await _layers_body(session))


describe(
    PREFIX + "/layers/{position}",
    "patch",
    {
        "summary": "Rename a layer, change its label, description or rule",
        "parameters": params("position"),
        "requestBody": body(LAYER_IN),
        "responses": {**LAYERS_OUT, "404": error("no layer at that position")},
    },
)


@routes.delete(PREFIX + "/layers/{position}")
async def remove_layer(request: web.Request) -> web.Response:
    rt = runtime(request)
    raw = request.query.get("move_to")
    move_to = int(raw) if raw and raw.isdigit() and len(raw) < 4 else None
    async with rt.db.transaction() as session:
        moved = await layers.remove_layer(session, path_int(request, "position"), move_to, rt.clock.now())
        result = await _layers_body(session)
    rt.wake_scheduler()
    return web.json_response({**result, "moved": moved})


describe(
    PREFIX + "/layers/{position}",
    "delete",
    {
        "summary": "Remove a layer (at least 4 remain); its subscribers move to ?move_to=<position>, "
        "each move recorded",
        "parameters": [
            *params("position"),
            {"name": "move_to", "in": "query", "required": True, "schema": {"type": "integer"}},
        ],
        "responses": {**LAYERS_OUT, "404": error("no layer at that position")},
    },
)


@routes.post(PREFIX + "/layers/order")
async def reorder_layers(request: web.Request) -> web.Response:
    rt = runtime(request)
    data = await read_input(request)
    async with rt.db.transaction() as session:
        await layers.reorder_layers(session, data.get("order"))
        return web.json_response(await _layers_body(session))


describe(
    PREFIX + "/layers/order",
    "post",
    {
        "summary": "Reorder the layers: order lists the current positions in their new order",
        "requestBody": body(
            {
                "type": "object",
                "required": ["order"],
                "properties": {"order": {"type": "array", "items": {"type": "integer"}}},
            }
        ),
        "responses": LAYERS_OUT,
    },
)


@routes.post(PREFIX + "/funnel/sweep")
async def sweep_now(request: web.Request) -> web.Response:
    rt = runtime(request)
    made = await sweep_on_demand(rt.db, rt.clock.now(), rt.settings.sender_domain)
    rt.wake_outbox()  # the re-permission mails it queued
    if any(j.history is not None for j in made):
        rt.wake_scheduler()  # the new layers' first steps
    return web.json_response({"moves": moves_json(made)})


describe(
    PREFIX + "/funnel/sweep",
    "post",
    {
        "summary": "Judge silence (demotion, sunset) and ended minimum stays now, as the hourly sweep does",
        "responses": {
            "200": json_body(
                {
                    "type": "object",
                    "properties": {
                        "moves": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "subscriber_id": {"type": "integer"},
                                    "to_layer": {"type": ["integer", "null"]},
                                    "sunset": {"type": "boolean"},
                                    "reason": {"type": "string"},
                                },
                            },
                        }
                    },
                }
            )
        },
    },
)


@routes.get(PREFIX + "/layer-history")
async def layer_history(request: web.Request) -> web.Response:
    rt = runtime(request)
    raw = request.query.get("after_id", "0")
    after = min(int(raw), MAX_ID) if raw.isdigit() and len(raw) < 18 else 0
    async with rt.db.read() as session:
        rows = (
            (
                await session.execute(
                    select(LayerHistory).where(LayerHistory.id > after).order_by(LayerHistory.id).limit(500)
                )
            )
            .scalars()
            .all()
        )
        return web.json_response({"moves": [history_json(h) for h in rows]})


describe(
    PREFIX + "/layer-history",
    "get",
    {
        "summary": "Every change of layer, 500 at a time: entering (confirmed, imported), moves with "
        "their rule and triggering events, sunsets and revivals; layers by id, with their position "
        "and name as they were then",
        "parameters": [{"name": "after_id", "in": "query", "schema": {"type": "integer"}}],
        "responses": {
            "200": json_body(
                {
                    "type": "object",
                    "properties": {
                        "moves": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "id": {"type": "integer"},
                                    "subscriber_id": {"type": "integer"},
                                    "kind": {"enum": ["enter", "move", "relocate", "sunset", "revive"]},
                                    "from_layer": {"type": ["integer", "null"]},
                                    "to_layer": {"type": ["integer", "null"]},
                                    "from_layer_id": {"type": ["integer", "null"]},
                                    "to_layer_id": {"type": "integer"},
                                    "from_name": {"type": ["string", "null"]},
                                    "to_name": {"type": ["string", "null"]},
                                    "reason": {"type": "string"},
                                    "event_ids": {"type": "array", "items": {"type": "integer"}},
                                    "at": {"type": "string"},
                                },
                            },
                        }
                    },
                }
            )
        },
    },
)


@routes.put(PREFIX + "/subscribers/{id}/preferred")
async def set_preferred(request: web.Request) -> web.Response:
    rt = runtime(request)
    data = await read_input(request)
    async with rt.db.transaction() as session:
        subscriber = await layers.set_preferred(session, path_int(request, "id"), data.get("preferred"))
        return web.json_response({"id": subscriber.id, "tags": subscriber.tags})


describe(
    PREFIX + "/subscribers/{id}/preferred",
    "put",
    {
        "summary": "Give or take the 'preferred' tag by hand",
        "parameters": params("id"),
        "requestBody": body(
            {"type": "object", "required": ["preferred"], "properties": {"preferred": {"type": "boolean"}}}
        ),
        "responses": {"200": json_body(OBJECT), "404": error("no such subscriber")},
    },
)


STEP_IN = {
    "type": "object",
    "properties": {
        "delay": {"type": "string", "examples": ["90s", "2h", "3d"]},
        "template": {"type": "string"},
        "purpose": {"enum": list(sequences.PURPOSES)},
        "send_window": {
            "type": ["object", "null"],
            "examples": [{"days": "mon-fri", "start": "09:00", "end": "17:00"}],
        },
        "condition": {"type": ["object", "null"], "examples": [{"skip_if_purchased": True}]},
    },
}


@routes.get(PREFIX + "/sequences")
async def list_sequences(request: web.Request) -> web.Response:
    async with runtime(request).db.read() as session:
        return web.json_response({"sequences": await sequences.list_sequences(session)})


describe(
    PREFIX + "/sequences",
    "get",
    {
        "summary": "Every sequence (layers' main ones and triggered ones) with its steps",
        "responses": {"200": json_body({"type": "object", "properties": {"sequences": {"type": "array"}}})},
    },
)


@routes.post(PREFIX + "/sequences")
async def create_sequence(request: web.Request) -> web.Response:
    rt = runtime(request)
    data = await read_input(request)
    async with rt.db.transaction() as session:
        sequence = await sequences.create_sequence(session, data, rt.clock.now(), rt.settings, rt.renderer)
        return web.json_response(await sequences.sequence_json(session, sequence), status=201)


describe(
    PREFIX + "/sequences",
    "post",
    {
        "summary": "Create a triggered sequence: purchase (back-end, optionally for one product), "
        "enquiry (follow-up) or referral (thank-you)",
        "requestBody": body(
            {
                "type": "object",
                "required": ["name", "trigger"],
                "properties": {
                    "name": {"type": "string"},
                    "trigger": {"enum": ["purchase", "enquiry", "referral"]},
                    "product": {"type": "string"},
                    "steps": {"type": "array", "items": STEP_IN},
                },
            }
        ),
        "responses": {
            "201": json_body(OBJECT),
            "400": error("invalid input"),
            "422": error("a step's template does not exist or does not render as a step; nothing written"),
        },
    },
)


@routes.post(PREFIX + "/sequences/{sequence}/steps")
async def add_step(request: web.Request) -> web.Response:
    rt = runtime(request)
    data = await read_input(request)
    async with rt.db.transaction() as session:
        step = await sequences.add_step(session, path_int(request, "sequence"), data, rt.settings, rt.renderer)
        return web.json_response(sequences.step_json(step), status=201)


describe(
    PREFIX + "/sequences/{sequence}/steps",
    "post",
    {
        "summary": "Append a step to a sequence",
        "parameters": params("sequence"),
        "requestBody": body({**STEP_IN, "required": ["template", "purpose"]}),
        "responses": {
            "201": json_body(OBJECT),
            "400": error("invalid input"),
            "404": error("no such sequence"),
            "422": error("a step's template does not exist or does not render as a step; nothing written"),
        },
    },
)


@routes.patch(PREFIX + "/sequences/{sequence}/steps/{step}")
async def update_step(request: web.Request) -> web.Response:
    rt = runtime(request)
    data = await read_input(request)
    async with rt.db.transaction() as session:
        step = await sequences.update_step(
            session, path_int(request, "sequence"), path_int(request, "step"), data, rt.settings, rt.renderer
        )
        return web.json_response(sequences.step_json(step))


describe(
    PREFIX + "/sequences/{sequence}/steps/{step}",
    "patch",
    {
        "summary": "Change a step's delay, template, purpose, window or condition (nobody gets it twice)",
        "parameters": params("sequence", "step"),
        "requestBody": body(STEP_IN),
        "responses": {
            "200": json_body(OBJECT),
            "400": error("invalid input"),
            "404": error("no such step"),
            "422": error("a step's template does not exist or does not render as a step; nothing written"),
        },
    },
)


@routes.delete(PREFIX + "/sequences/{sequence}/steps/{step}")
async def delete_step(request: web.Request) -> web.Response:
    rt = runtime(request)
    async with rt.db.transaction() as session:
        await sequences.delete_step(session, path_int(request, "sequence"), path_int(request, "step"))
    return web.json_response({"deleted": True})


describe(
    PREFIX + "/sequences/{sequence}/steps/{step}",
    "delete",
    {
        "summary": "Delete a step nobody has received yet",
        "parameters": params("sequence", "step"),
        "responses": {
            "200": json_body(OBJECT),
            "404": error("no such step"),
            "409": error("the step was already sent"),
        },
    },
)


STEP_AB_IN = {
    "type": "object",
    "required": ["variants"],
    "properties": {
        "variants": AB_VARIANTS_IN,
        "keep_winner_after": {
            "type": ["integer", "null"],
            "minimum": 100,
            "description": "once every variant was delivered this many times and the verdict names a winner, "
            "the step sends the winner only",
        },
    },
}


@routes.get(PREFIX + "/steps/{id}/ab")
async def get_step_ab(request: web.Request) -> web.Response:
    async with runtime(request).db.read() as session:
        test = await abtests.test_of(session, step_id=path_int(request, "id"))
        return web.json_response(await abtests.test_json(session, test))


describe(
    PREFIX + "/steps/{id}/ab",
    "get",
    {
        "summary": "A drip step's A/B test: per variant sent, human opens and clicks, unsubscribes, complaints "
        "and conversions, the probability each is best on human clicks, the verdict in words, the winner",
        "parameters": params("id"),
        "responses": {"200": json_body(AB_TEST_REF), "404": error("no such step, or it has no A/B test")},
    },
)


@routes.put(PREFIX + "/steps/{id}/ab")
async def put_step_ab(request: web.Request) -> web.Response:
    rt = runtime(request)
    data = await read_input(request)
    async with rt.db.transaction() as session:
        test = await abtests.put_step_test(
            session, path_int(request, "id"), data, rt.clock.now(), rt.settings, rt.renderer
        )
        return web.json_response(await abtests.test_json(session, test))


describe(
    PREFIX + "/steps/{id}/ab",
    "put",
    {
        "summary": "Give a drip step 2-4 variants: each subscriber reaching it gets one, by the split's weights "
        "(replaces a test that has sent nothing yet)",
        "parameters": params("id"),
        "requestBody": body(STEP_AB_IN),
        "responses": {
            "200": json_body(AB_TEST_REF),
            "404": error("no such step"),
            "409": error("the step's test has sent mail already"),
            "422": error("a variant's template or subject does not render as a step; nothing written"),
        },
    },
)


@routes.delete(PREFIX + "/steps/{id}/ab")
async def delete_step_ab(request: web.Request) -> web.Response:
    rt = runtime(request)
    async with rt.db.transaction() as session:
        await abtests.remove_test(session, await abtests.test_of(session, step_id=path_int(request, "id")))
    return web.json_response({"deleted": True})


describe(
    PREFIX + "/steps/{id}/ab",
    "delete",
    {
        "summary": "Remove a step's A/B test that has sent nothing yet",
        "parameters": params("id"),
        "responses": {
            "200": json_body(OBJECT),
            "404": error("no such step, or it has no A/B test"),
            "409": error("the test has sent mail already"),
        },
    },
)


@routes.post(PREFIX + "/steps/{id}/ab/winner")
async def pick_step_winner(request: web.Request) -> web.Response:
    rt = runtime(request)
    data = await read_input(request)
    async with rt.db.transaction() as session:
        test = await abtests.test_of(session, step_id=path_int(request, "id"))
        await abtests.pick_winner(session, test, data.get("variant"), rt.clock.now())
        return web.json_response(await abtests.test_json(session, test))


describe(
    PREFIX + "/steps/{id}/ab/winner",
    "post",
    {
        "summary": "Keep this variant: from now on the step sends it only",
        "parameters": params("id"),
        "requestBody": body(AB_WINNER_IN),
        "responses": {
            "200": json_body(AB_TEST_REF),
            "404": error("no such step, or it has no A/B test"),
            "409": error("a winner was chosen already"),
        },
    },
)
