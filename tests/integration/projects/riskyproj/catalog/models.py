"""The final state of the catalog app; each migration in migrations/ covers one risk case."""

import os

from django.db import models


class Category(models.Model):
    name = models.CharField(max_length=50)
    code = models.CharField(max_length=10)


class Product(models.Model):
    name = models.CharField(max_length=100, help_text="Shown in the shop.")
    sku = models.CharField(max_length=20)
    price = models.DecimalField(max_digits=8, decimal_places=2)
    views = models.BigIntegerField(default=0)
    category = models.ForeignKey(Category, on_delete=models.PROTECT)
    title = models.CharField(max_length=100, default="")
    note = models.TextField(null=True)
    stock = models.IntegerField(default=0)
    active = models.BooleanField(db_default=True)

    # A model change without a migration, switched on by the tests.
    if os.environ.get("RISKYPROJ_PENDING_MODEL_CHANGE"):
        extra = models.IntegerField(null=True)

    class Meta:
        indexes = [models.Index(fields=["sku"], name="catalog_sku_idx")]
