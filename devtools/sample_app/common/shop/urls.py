from django.urls import path

from . import health, slow, views, warmup

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("products/", views.product_list, name="product-list"),
    path("orders/", views.create_order, name="order-create"),
    path("slow/", slow.slow, name="slow"),
    path("warmup", warmup.warmup, name="warmup"),
]
