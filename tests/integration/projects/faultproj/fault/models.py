from django.db import models


class Item(models.Model):
    name = models.CharField(max_length=50)
    note = models.TextField(null=True)
    tag = models.ForeignKey("Tag", null=True, on_delete=models.SET_NULL)


class Tag(models.Model):
    label = models.CharField(max_length=30)
