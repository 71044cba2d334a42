"""Parse and check the body of POST /orders/ (shared by every release)."""

import json

from django.core.exceptions import ValidationError
from django.core.validators import validate_email

MAX_LINES = 20
MAX_QTY = 100


class BadOrder(ValueError):
    """The request body is not an order we can accept; the message says why."""


def parse_order(raw: bytes) -> dict:
    try:
        data = json.loads(raw or b"null")
    except ValueError as exc:
        raise BadOrder(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadOrder('body must be a JSON object: {"customer": email, "items": [{"sku": ..., "qty": ...}]}')
    customer = data.get("customer")
    try:
        validate_email(customer)
    except ValidationError:
        raise BadOrder("customer must be an email address") from None
    items = data.get("items")
    if not isinstance(items, list) or not items:
        raise BadOrder("items must be a non-empty list of {sku, qty}")
    if len(items) > MAX_LINES:
        raise BadOrder(f"at most {MAX_LINES} items per order")
    quantities: dict[str, int] = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("sku"), str):
            raise BadOrder("each item needs a string sku")
        qty = item.get("qty", 1)
        if not isinstance(qty, int) or isinstance(qty, bool) or not 1 <= qty <= MAX_QTY:
            raise BadOrder(f"qty of {item['sku']} must be an integer from 1 to {MAX_QTY}")
        quantities[item["sku"]] = quantities.get(item["sku"], 0) + qty
    return {"customer": customer.lower(), "quantities": quantities, "extra": data}
