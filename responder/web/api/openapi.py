"""The OpenAPI 3.1 document of the admin API, kept beside the routes it describes."""

from __future__ import annotations

from typing import Any

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": ["string", "null"]},
            },
        }
    },
}
LAYER = {
    "type": "object",
    "required": ["id", "position", "name", "label", "subscribers"],
    "properties": {
        "id": {"type": "integer"},
        "position": {"type": "integer"},
        "name": {"type": "string"},
        "label": {"type": "string"},
        "description": {"type": "string"},
        "rule": {"type": "object"},
        "subscribers": {"type": "integer"},
    },
}
SUBSCRIBER = {
    "type": "object",
    "required": ["id", "email", "status"],
    "properties": {
        "id": {"type": "integer"},
        "email": {"type": "string"},
        "name": {"type": "string"},
        "status": {"enum": ["pending", "active", "unsubscribed", "bounced", "complained", "sunset"]},
        "layer": {"type": ["object", "null"]},
        "attributes": {"type": "object"},
        "tags": {"type": "array"},
        "created_at": {"type": "string"},
        "confirmed_at": {"type": ["string", "null"]},
        "unsubscribed_at": {"type": ["string", "null"]},
        "layer_history": {"type": "array"},
        "enrollments": {"type": "array"},
        "consent": {
            "type": "array",
            "description": "the consent on record: subscribe and confirm, with form, wording hash, version, "
            "time, address and browser",
        },
    },
}


_COUNT = {"type": "integer", "minimum": 0}
_RATE = {"type": ["number", "null"]}
AB_TEST = {
    "type": "object",
    "description": "An A/B test: its variants with their figures and probability of being best, and the "
    "verdict (see docs/rules.md, A/B tests)",
    "required": ["id", "variants", "verdict", "winner", "thresholds"],
    "properties": {
        "id": {"type": "integer"},
        "newsletter_id": {"type": ["integer", "null"]},
        "step_id": {"type": ["integer", "null"]},
        "variants": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["label", "weight", "figures", "p_best"],
                "properties": {
                    "label": {"enum": ["A", "B", "C", "D"]},
                    "subject": {"type": ["string", "null"]},
                    "template": {"type": ["string", "null"]},
                    "weight": {"type": "integer"},
                    "share": {"type": "number"},
                    "figures": {
                        "type": "object",
                        "description": "queued mails; sent (delivered); of those, opened and clicked by a person "
                        "(machine hits excluded), unsubscribed, complained, converted (a purchase or a move up "
                        "within conversion_window after delivery)",
                        "properties": {
                            **{
                                name: _COUNT
                                for name in (
                                    "queued",
                                    "sent",
                                    "opened",
                                    "clicked",
                                    "unsubscribed",
                                    "complained",
                                    "converted",
                                )
                            },
                            **{
                                name: _RATE
                                for name in (
                                    "open_rate",
                                    "click_rate",
                                    "unsubscribe_rate",
                                    "complaint_rate",
                                    "conversion_rate",
                                )
                            },
                        },
                    },
                    "p_best": {"type": "number", "description": "probability of the best human click rate"},
                },
            },
        },
        "verdict": {
            "type": "object",
            "required": ["status", "sentence", "leader"],
            "properties": {
                "status": {"enum": ["too_early", "undecided", "winner"]},
                "sentence": {"type": "string"},
                "leader": {"type": "string"},
                "winner": {"type": ["string", "null"]},
            },
        },
        "winner": {"type": ["string", "null"], "description": "the variant chosen; all later mail is it"},
        "decided_by": {"enum": ["verdict", "leader", "admin", None]},
        "decided_at": {"type": ["string", "null"], "format": "date-time"},
        "conversion_window": {"type": "string"},
        "thresholds": {"type": "object"},
        "test_share": {"type": "integer"},
        "wait": {"type": "string"},
        "on_no_winner": {"enum": ["best", "wait"]},
        "phase": {
            "enum": ["test", "wait", "pick", "rest"],
            "description": "test: queueing the test share; wait: for the winner; pick: the wait ended "
            "without a clear winner, an admin picks; rest: the rest get the winner",
        },
        "tested_at": {"type": ["string", "null"], "format": "date-time"},
        "rest_at": {"type": ["string", "null"], "format": "date-time"},
        "keep_winner_after": {"type": ["integer", "null"]},
    },
}
AB_VARIANTS_IN = {
    "type": "array",
    "minItems": 2,
    "maxItems": 4,
    "description": "variants A, B, … in order: each a subject and/or a template of its own (neither: the "
    "mail as written) and a weight in the split (default 1 each)",
    "items": {
        "type": "object",
        "properties": {
            "subject": {"type": ["string", "null"], "maxLength": 998},
            "template": {"type": ["string", "null"], "maxLength": 120},
            "weight": {"type": "integer", "minimum": 1, "maximum": 100},
        },
    },
}
NEWSLETTER_AB_IN = {
    "type": "object",
    "required": ["variants"],
    "properties": {
        "variants": AB_VARIANTS_IN,
        "test_share": {
            "type": "integer",
            "minimum": 1,
            "maximum": 100,
            "description": "percent of the audience split between the variants (default 20); the rest get the winner",
        },
        "wait": {"type": "string", "examples": ["4h"], "description": "after the test share was queued (default 4h)"},
        "on_no_winner": {
            "enum": ["best", "wait"],
            "description": "when the wait ends without a winner: send the variant most likely best (default), "
            "or wait for an admin to pick",
        },
    },
}
AB_WINNER_IN = {"type": "object", "required": ["variant"], "properties": {"variant": {"enum": ["A", "B", "C", "D"]}}}


PATHS: dict[str, dict[str, Any]] = {}
SCHEMAS: dict[str, Any] = {"Error": ERROR, "Layer": LAYER, "Subscriber": SUBSCRIBER, "AbTest": AB_TEST}
AB_TEST_REF = {"$ref": "#/components/schemas/AbTest"}


def describe(path: str, method: str, operation: dict[str, Any]) -> None:
    """Register one operation; each API module describes its routes beside their handlers."""
    operation.setdefault("responses", {}).setdefault("401", error("missing or wrong bearer token"))
    if method.lower() not in ("get", "head"):
        operation["responses"].setdefault("403", error("the token has read scope"))
    # Every operation that takes input can refuse it, and every one naming a thing in its path
    # can find it missing: the middleware answers these uniformly, so the document says so.
    if "requestBody" in operation or operation.get("parameters") or "{" in path:
        operation["responses"].setdefault("400", error("invalid input"))
    if "{" in path:
        operation["responses"].setdefault("404", error("not found"))
    PATHS.setdefault(path, {})[method.lower()] = operation


def error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def json_body(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def document(base_url: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "responder admin API", "version": "1"},
        "servers": [{"url": base_url}],
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": SCHEMAS,
        },
        "paths": PATHS,
    }


describe(
    "/api/v1/layers",
    "get",
    {
        "summary": "The trust layers in order, with their active subscriber counts",
        "responses": {
            "200": json_body(
                {
                    "type": "object",
                    "required": ["layers"],
                    "properties": {"layers": {"type": "array", "items": {"$ref": "#/components/schemas/Layer"}}},
                }
            )
        },
    },
)
describe(
    "/api/v1/subscribers/{id}",
    "get",
    {
        "summary": "One subscriber with layer history and enrollments",
        "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}],
        "responses": {
            "200": json_body({"$ref": "#/components/schemas/Subscriber"}),
            "404": error("no such subscriber"),
        },
    },
)
describe(
    "/api/v1/events",
    "post",
    {
        "summary": "Record a purchase, referral, reply or enquiry for an address; promotion rules run at once",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["email", "type"],
                        "properties": {
                            "email": {"type": "string", "maxLength": 254},
                            "type": {"enum": ["purchase", "referral", "reply", "enquiry"]},
                            "data": {"type": "object"},
                        },
                    }
                }
            },
        },
        "responses": {
            "201": json_body(
                {
                    "type": "object",
                    "required": ["event", "promoted_to"],
                    "properties": {"event": {"type": "object"}, "promoted_to": {"type": ["integer", "null"]}},
                },
                "recorded",
            ),
            "400": error("invalid input"),
            "404": error("unknown address"),
        },
    },
)
