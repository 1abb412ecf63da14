"""What the client and the server agree on about the wire, written once for both."""

from __future__ import annotations

MiB = 1 << 20
DEFAULT_MAX_MESSAGE_BYTES = 64 * MiB  # both directions; the server's --max-message-bytes default
REQUEST_ID_KEY = "x-request-id"  # the server echoes it in the trailing metadata of every Embed


def channel_options(max_message_bytes: int, round_robin: bool = True) -> list[tuple[str, object]]:
    """gRPC channel (or server) options for a message size limit; `round_robin` spreads a
    client's calls over every address its target resolves to."""
    options: list[tuple[str, object]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]
    if round_robin:
        options.append(("grpc.lb_policy_name", "round_robin"))
    return options
