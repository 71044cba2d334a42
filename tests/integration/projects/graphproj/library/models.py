from django.db import models


class Book(models.Model):
    title = models.CharField(max_length=100)
    subtitle = models.CharField(max_length=100, null=True)
    pages = models.IntegerField(null=True)
