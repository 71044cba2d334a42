from django.db import transaction
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from .models import Customer, Order, OrderEvent, OrderLine, Product
from .validation import BadOrder, parse_order


def display_name(order: dict) -> str:
    """A new customer's name: the order's "name", else the local part of the email."""
    name = order["extra"].get("name")
    if isinstance(name, str) and name.strip():
        return name.strip()[:200]
    return order["customer"].split("@", 1)[0][:200]


@require_GET
def product_list(request):
    products = [
        {"sku": p.sku, "name": p.name, "price": str(p.price), "stock": p.stock, "description": p.description}
        for p in Product.objects.order_by("sku")
    ]
    return JsonResponse(products, safe=False)


@csrf_exempt
@require_POST
def create_order(request):
    try:
        order = parse_order(request.body)
    except BadOrder as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    channel = order["extra"].get("channel", Order.Channel.WEB)
    if channel not in Order.Channel.values:
        return JsonResponse({"error": f"channel must be one of {', '.join(Order.Channel.values)}"}, status=400)
    products = Product.objects.in_bulk(list(order["quantities"]), field_name="sku")
    unknown = sorted(set(order["quantities"]) - set(products))
    if unknown:
        return JsonResponse({"error": f"unknown sku: {', '.join(unknown)}"}, status=400)
    with transaction.atomic():
        # rename step 1: reads name; Customer.save() writes full_name too
        customer, _ = Customer.objects.get_or_create(email=order["customer"],
                                                     defaults={"name": display_name(order)})
        lines = [
            OrderLine(product=products[sku], quantity=qty, unit_price=products[sku].price)
            for sku, qty in sorted(order["quantities"].items())
        ]
        total = sum(line.unit_price * line.quantity for line in lines)
        created = Order.objects.create(customer=customer, total=total, channel=channel)
        for line in lines:
            line.order = created
        OrderLine.objects.bulk_create(lines)
        OrderEvent.objects.create(order=created, kind="created", detail={"lines": len(lines)})
    return JsonResponse(
        {"id": created.pk, "customer": customer.email, "customer_name": customer.name,
         "status": created.status, "total": str(total), "lines": len(lines), "channel": channel},
        status=201,
    )
