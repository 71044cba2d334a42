"""Medium risk: a data migration (RunPython), reversible.

Fills the new description column for the seeded products; the reverse empties
it again, so ``migrate shop 0006`` can undo it.
"""

from django.db import migrations

DESCRIPTIONS = {
    "TEA-001": "Sencha from Shizuoka, first flush.",
    "TEA-002": "Assam, strong enough for milk.",
    "CUP-001": "Hand-glazed, 250 ml.",
    "POT-001": "Borosilicate glass with a steel infuser.",
    "FLT-001": "Fine mesh, fits most cups.",
}


def backfill(apps, schema_editor):
    Product = apps.get_model("shop", "Product")
    db = schema_editor.connection.alias
    for sku, text in DESCRIPTIONS.items():
        Product.objects.using(db).filter(sku=sku, description__isnull=True).update(description=text)


def clear(apps, schema_editor):
    Product = apps.get_model("shop", "Product")
    db = schema_editor.connection.alias
    for sku, text in DESCRIPTIONS.items():
        Product.objects.using(db).filter(sku=sku, description=text).update(description=None)


class Migration(migrations.Migration):
    dependencies = [("shop", "0006_order_created_index")]

    operations = [migrations.RunPython(backfill, clear)]
