"""Release 4: rename Customer.name to Customer.full_name, step 2 of 5 (backfilled).

Deployed after the backfill. Migrations 0009-0011 make full_name NOT NULL
without a scan under a blocking lock: CHECK (full_name IS NOT NULL) NOT VALID,
VALIDATE it in its own transaction (it fails, and stops the deploy before the
rollout, if the backfill left a NULL), SET NOT NULL (proven by the validated
CHECK), drop the CHECK. The code is step 1's: it reads name and writes both.
See docs/expand-contract.md for the five releases.
"""

from django.db import models


class Customer(models.Model):
    email = models.EmailField(unique=True)
    name = models.CharField(max_length=200, blank=True)
    # rename step 2 (backfilled): NOT NULL from 0011
    full_name = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def save(self, *args, **kwargs):
        # write both; name is still the source of truth
        self.full_name = self.name
        update_fields = kwargs.get("update_fields")
        if update_fields is not None and "name" in update_fields:
            kwargs["update_fields"] = {*update_fields, "full_name"}
        super().save(*args, **kwargs)

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
