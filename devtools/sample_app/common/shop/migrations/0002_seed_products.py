"""Seed the catalogue with a few products (reversible: the reverse deletes them)."""

from decimal import Decimal

from django.db import migrations

PRODUCTS = [
    ("TEA-001", "Green tea, 100 g", Decimal("6.50"), 120),
    ("TEA-002", "Black tea, 250 g", Decimal("9.90"), 80),
    ("CUP-001", "Stoneware cup", Decimal("12.00"), 40),
    ("POT-001", "Glass teapot, 1 l", Decimal("29.00"), 15),
    ("FLT-001", "Steel tea filter", Decimal("4.25"), 200),
]


def seed(apps, schema_editor):
    Product = apps.get_model("shop", "Product")
    for sku, name, price, stock in PRODUCTS:
        Product.objects.using(schema_editor.connection.alias).get_or_create(
            sku=sku, defaults={"name": name, "price": price, "stock": stock}
        )


def unseed(apps, schema_editor):
    Product = apps.get_model("shop", "Product")
    Product.objects.using(schema_editor.connection.alias).filter(sku__in=[p[0] for p in PRODUCTS]).delete()


class Migration(migrations.Migration):
    dependencies = [("shop", "0001_initial")]

    operations = [migrations.RunPython(seed, unseed)]
