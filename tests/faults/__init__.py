"""Helpers of the fault-injection suite: the worker program it runs, its process handling,
and the conservation check every scenario ends with."""
