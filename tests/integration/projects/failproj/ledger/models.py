from django.db import models


class Account(models.Model):
    name = models.CharField(max_length=50)
    note = models.TextField(null=True)


class Entry(models.Model):
    account = models.ForeignKey(Account, on_delete=models.CASCADE)
    amount = models.IntegerField()
