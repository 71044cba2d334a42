from django.db import models


class Thing(models.Model):
    name = models.CharField(max_length=50)
    a = models.IntegerField(null=True)
    b = models.IntegerField(null=True)
