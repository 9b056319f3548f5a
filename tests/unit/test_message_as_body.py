"""`message_as_body` (services/common/batch_subscriber.py): the body FastStream caches on
a batch's message must not make the message a reference cycle of its own."""

from __future__ import annotations

import gc
import weakref
from typing import Any

from services.common.batch_subscriber import message_as_body


class _Message:
    """Stands for FastStream's message: it keeps its decoded body (`StreamMessage.decode`)."""

    def __init__(self) -> None:
        self.raw_message = ("record",)
        self.decoded: Any = None


async def test_a_batchs_message_is_freed_when_the_handler_is_done_without_the_collector() -> None:
    message = _Message()
    message.decoded = await message_as_body(message)  # type: ignore[arg-type]
    assert message.decoded.raw_message == ("record",)  # the handler reads it as the message
    gone = weakref.ref(message)
    gc.disable()
    try:
        del message
        assert gone() is None  # freed by its reference count: no cycle through its body
    finally:
        gc.enable()
