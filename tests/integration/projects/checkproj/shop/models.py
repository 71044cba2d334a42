"""Final state of the models; each later migration makes one data-dependent change."""

from django.db import models


class Vendor(models.Model):
    name = models.CharField(max_length=50)
    country = models.CharField(max_length=2)

    class Meta:
        unique_together = [("name", "country")]  # 0006


class Item(models.Model):
    sku = models.CharField(max_length=40)  # 0002: SET NOT NULL
    code = models.CharField(max_length=20, unique=True)  # 0003: unique
    color = models.CharField(max_length=20)
    size = models.CharField(max_length=5, null=True)
    vendor = models.ForeignKey(Vendor, null=True, on_delete=models.CASCADE)  # 0005: was an IntegerField
    note = models.CharField(max_length=40)  # 0007 adds it nullable, 0008 sets NOT NULL

    class Meta:
        constraints = [models.UniqueConstraint(fields=["color", "size"], name="shop_item_color_size_uniq")]  # 0004
