from django.db import models


class Note(models.Model):
    product = models.ForeignKey("catalog.Product", on_delete=models.CASCADE, related_name="notes")
    text = models.TextField()
