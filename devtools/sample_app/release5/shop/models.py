"""Release 5: rename Customer.name to Customer.full_name, step 3 of 5 (switch reads).

Code only, no migration: this code reads full_name (NOT NULL since step 2) and
still writes both columns, because step 2's code, serving beside it during the
rollout (and again after a rollback to it), reads name.
See docs/expand-contract.md for the five releases.
"""

from django.db import models


class Customer(models.Model):
    email = models.EmailField(unique=True)
    name = models.CharField(max_length=200, blank=True)
    # rename step 3 (switch reads): full_name is read, both are written
    full_name = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def save(self, *args, **kwargs):
        # write both; full_name is now the source of truth
        self.name = self.full_name
        update_fields = kwargs.get("update_fields")
        if update_fields is not None and "full_name" in update_fields:
            kwargs["update_fields"] = {*update_fields, "name"}
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
