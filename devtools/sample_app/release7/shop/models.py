"""Release 7: rename Customer.name to Customer.full_name, step 5 of 5 (contract).

The code is step 4's. Migration 0013 is post-deploy (safedeploy_phase =
"post"): once every host runs this release, it drops the column name, which no
running code has read or written since step 4.
See docs/expand-contract.md for the five releases.
"""

from django.db import models


class Customer(models.Model):
    email = models.EmailField(unique=True)
    # rename step 5 (contract): 0013 drops the column name after the rollout
    full_name = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return self.email


class Product(models.Model):
    sku = models.CharField(max_length=32, unique=True)
    name = models.CharField(max_length=200)
    price = models.DecimalField(max_digits=10, decimal_places=2)
    stock = models.PositiveIntegerField(default=0)
    # release 2: nullable, so release 1's INSERTs (which do not name it) still work
    description = models.TextField(null=True, blank=True)

    def __str__(self):
        return f"{self.sku} {self.name}"


class Order(models.Model):
    class Channel(models.TextChoices):
        WEB = "web", "Web shop"
        APP = "app", "Mobile app"
        PHONE = "phone", "Phone"

    class Status(models.TextChoices):
        NEW = "new", "New"
        PAID = "paid", "Paid"
        SHIPPED = "shipped", "Shipped"
        CANCELLED = "cancelled", "Cancelled"

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="orders")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.NEW)
    total = models.DecimalField(max_digits=12, decimal_places=2, default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    # release 2: NOT NULL with a *database* default, so release 1's INSERTs, which
    # do not know the column, get 'web' from PostgreSQL instead of failing
    channel = models.CharField(max_length=16, choices=Channel.choices, db_default=Channel.WEB)

    class Meta:
        indexes = [models.Index(fields=["created_at"], name="shop_order_created_idx")]

    def __str__(self):
        return f"order {self.pk} ({self.status})"


class OrderLine(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="lines")
    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="+")
    quantity = models.PositiveIntegerField()
    unit_price = models.DecimalField(max_digits=10, decimal_places=2)


class OrderEvent(models.Model):
    """Release 2: an audit trail of what happened to an order."""

    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=32)
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
