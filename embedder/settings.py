"""Server settings: typed, validated once, passed in.

Each field is a `serve` flag (`--max-batch-size`) and an environment variable
(`EMBEDDER_MAX_BATCH_SIZE`); a flag wins over the variable, the variable over the default.
The field descriptions are the documentation: `embedder serve --help`, and docs/settings.md, which
`python -m tools.settings_table` writes from them (a test fails when the file is stale).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from .wire import DEFAULT_MAX_MESSAGE_BYTES, MiB


class Settings(BaseModel):
    # hide_input_in_errors: a validation error must not echo the input, tokens included.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    address: str = Field("127.0.0.1:50051", description="host:port to listen on (port 0: any free port)")
    models_dir: Path = Field(
        Path("models"), description="model repository: one folder per model with model.json"
    )
    preload: bool = Field(False, description="load and warm every available model before reporting SERVING")
    max_loaded: int = Field(
        4, ge=1, description="sessions (graphs) resident; the least recently used is evicted"
    )
    idle_ttl_s: float = Field(0.0, ge=0, description="evict a session idle this long (0 = never)")
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads (0 = CPUs available)")
    preprocess_workers: int = Field(0, ge=0, description="decode/resize threads (0 = CPUs available)")
    max_concurrent_rpcs: int = Field(
        512, ge=0, description="calls in progress; beyond: RESOURCE_EXHAUSTED (0 = no limit)"
    )
    max_batch_size: int = Field(8, ge=1, le=1024, description="images per session.run (1 to 1024)")
    max_batch_delay_ms: float = Field(
        2.0,
        ge=0,
        description="how long a batch waits to fill while other requests are in progress (a lone request runs at once)",
    )
    max_queue_images: int = Field(
        256,
        ge=1,
        description="images admitted per model (decoding, queued or running); beyond: RESOURCE_EXHAUSTED",
    )
    max_text_batch_size: int = Field(
        32, ge=1, le=1024, description="texts per session.run of a text graph (1 to 1024)"
    )
    max_queue_texts: int = Field(
        1024,
        ge=1,
        description="texts admitted per model (tokenizing, queued or running); beyond: RESOURCE_EXHAUSTED",
    )
    max_texts_per_request: int = Field(256, ge=1, description="texts in one EmbedText request")
    max_text_chars: int = Field(
        4096,
        ge=1,
        description="characters of one text, checked before tokenizing (tokens past 77 are cut anyway)",
    )
    max_message_bytes: int = Field(
        DEFAULT_MAX_MESSAGE_BYTES,
        ge=MiB,
        description="largest gRPC message, either direction (at least 1 MiB)",
    )
    max_images_per_request: int = Field(256, ge=1, description="images in one Embed request")
    max_image_bytes: int = Field(32 * MiB, ge=1, description="encoded size of one image")
    max_image_pixels: int = Field(
        40_000_000,
        ge=1,
        le=178_956_970,  # above that, Pillow's own bomb guard refuses first
        description="width x height from the header, before decoding (at most 178956970)",
    )
    max_resized_pixels: int = Field(
        16_000_000, ge=1, description="pixels after the shortest-edge resize (extreme aspect ratios)"
    )
    image_root: Path | None = Field(
        None, description="allow Image.path inputs under this folder (off if unset)"
    )
    max_connection_age_s: float = Field(
        0.0,
        ge=0,
        description="close connections after this long, so clients re-resolve DNS (0 = never)",
    )
    shutdown_grace_s: float = Field(15.0, ge=0, description="SIGTERM: time for in-flight calls to finish")
    metrics_address: str | None = Field(
        None, description="host:port for the Prometheus endpoint (off if unset)"
    )
    log_format: str = Field("text", pattern="^(text|json)$", description="log lines as text or json")
    log_level: str = Field(
        "INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$", description="DEBUG, INFO, WARNING or ERROR"
    )
    allow_golden_mismatch: bool = Field(
        False,
        description="serve a model whose golden self-check at load fails (the figure is still reported)",
    )
    tls_cert: Path | None = Field(None, description="PEM server certificate (enables TLS)")
    tls_key: Path | None = Field(None, description="PEM private key of the TLS certificate")
    tls_client_ca: Path | None = Field(None, description="PEM CA bundle: require client certificates (mTLS)")
    auth_tokens: SecretStr | None = Field(None, description="comma-separated bearer tokens (prefer the file)")
    auth_tokens_file: Path | None = Field(None, description="file with one bearer token per line")
    http_address: str = Field(
        "127.0.0.1:8000",
        description="host:port of the HTTP front end (OpenAI-compatible /v1/embeddings); off disables it. "
        "Left unset while address is on port 0, it takes any free port too",
    )
    http_max_body_bytes: int = Field(
        64 * MiB, ge=1024, description="largest HTTP request body; beyond: 413 (base64 adds a third)"
    )
    http_timeout_s: float = Field(
        0.0, ge=0, description="HTTP deadline of a request without X-Request-Timeout; past it: 504 (0 = none)"
    )
    http_body_timeout_s: float = Field(
        30.0, gt=0, description="time for an HTTP request's whole body to arrive; beyond: 408"
    )
    http_header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="time for an HTTP request's headers to arrive once a connection opens or a request starts",
    )
    http_max_header_bytes: int = Field(
        64 * 1024, ge=1024, description="request line and headers of one HTTP request; beyond: 431"
    )
    http_keep_alive_s: float = Field(
        5.0, gt=0, description="close an idle HTTP keep-alive connection after this long"
    )
    http_max_connections: int = Field(
        1024, ge=1, description="HTTP connections (and requests) at once; beyond: 503"
    )

    @model_validator(mode="after")
    def _tls_pairs(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mTLS) needs tls_cert and tls_key")
        return self

    def tokens(self) -> frozenset[str]:
        """Bearer tokens from the setting and the file; empty means auth is off."""
        found: list[str] = []
        if self.auth_tokens is not None:
            found += self.auth_tokens.get_secret_value().split(",")
        if self.auth_tokens_file is not None:
            found += self.auth_tokens_file.read_text(encoding="utf-8").splitlines()
        return frozenset(t.strip() for t in found if t.strip())
