"""Example workflows that `make run` / `make up` serve:
`runstore worker --module examples.workflows`."""

from examples.workflows import approval, echo, fanout, order_saga

__all__ = ["approval", "echo", "fanout", "order_saga"]
