"""`tidings codes`, `tidings preview` and `tidings config`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO

import click
import yaml

from tidings.cli.base import fail, main, settings_of
from tidings.errors import ConfigError, TidingsError
from tidings.notification.messages import MESSAGE_TYPES


@main.group("codes")
def codes_group() -> None:
    """Encrypt one-time codes the way tidings decrypts them (AES-256-GCM)."""


@codes_group.command("encrypt")
@click.argument("source", type=click.File("rb"), default="-")
@click.pass_context
def codes_encrypt(ctx: click.Context, source: IO[bytes]) -> None:
    """Encrypt each line of SOURCE (default: stdin) with crypto.active_key.

    Prints one JSON value per line, ready for a code event's `code` field:
    output line N is input line N, always. A blank line (or one that is not
    UTF-8) is refused, naming it, and nothing is printed, so that a script
    pairing inputs with outputs can never give one user another user's code.
    Codes are read from stdin rather than arguments so they stay out of shell
    history and process lists.
    """
    from tidings.notification.codes import CodeCipher

    name = "stdin" if source.name in ("<stdin>", "-") else source.name
    codes: list[str] = []
    problems: list[str] = []
    for number, raw in enumerate(source, start=1):
        try:
            code = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            problems.append(f"{name} line {number}: not valid UTF-8")
            continue
        if not code.strip():
            problems.append(f"{name} line {number}: blank; every line must hold a code")
            continue
        codes.append(code)
    if problems:
        for problem in problems[:20]:
            click.echo(f"error: {problem}", err=True)
        fail("nothing was encrypted: output line N must be input line N", code=1)
    try:
        cipher = CodeCipher.from_settings(settings_of(ctx).crypto)
        encrypted = [cipher.encrypt(code).model_dump_json() for code in codes]
    except TidingsError as exc:
        fail(str(exc), code=2 if isinstance(exc, ConfigError) else 1)
    for line in encrypted:
        click.echo(line)


@codes_group.command("generate-key")
def codes_generate_key() -> None:
    """Print a new random key for crypto.keys (base64, 32 bytes)."""
    from tidings.notification.codes import generate_key

    click.echo(generate_key())


@main.command("preview")
@click.argument("message_type", type=click.Choice(MESSAGE_TYPES))
@click.option("--lang", default="en", show_default=True, help="The user's preferred language.")
@click.option("--channel", type=click.Choice(["email", "sms"]), default="email", show_default=True)
@click.option("--instance", default="preview", show_default=True, help="Whose overrides to use.")
@click.option("--html", "show_html", is_flag=True, help="Print the HTML part, not the text part.")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to a file: .html (the HTML part), .eml (the whole email), or text.",
)
@click.pass_context
def preview_command(
    ctx: click.Context,
    message_type: str,
    lang: str,
    channel: str,
    instance: str,
    show_html: bool,
    output: Path | None,
) -> None:
    """Render MESSAGE_TYPE with sample data, to check texts and overrides before deploying.

    Uses templates.dir like the workers do; a broken override is reported with
    its file and line. The sample code is 123456, never a real one.
    """
    from tidings.notification.preview import render_preview

    try:
        rendered = render_preview(
            settings_of(ctx),
            message_type=message_type,
            lang=lang,
            channel=channel,
            instance_id=instance,
        )
    except TidingsError as exc:
        fail(str(exc))
    if output is not None:
        suffix = output.suffix.lower()
        data = rendered.eml if suffix == ".eml" else (rendered.html if suffix == ".html" else None)
        output.write_bytes(data if isinstance(data, bytes) else (data or rendered.text).encode())
        click.echo(f"wrote {output}")
        return
    click.echo(rendered.html if show_html and rendered.html else rendered.summary)


@main.group("config")
def config_group() -> None:
    """Inspect the settings."""


@config_group.command("show")
@click.option("--format", "output_format", type=click.Choice(["yaml", "json"]), default="yaml")
@click.pass_context
def config_show(ctx: click.Context, output_format: str) -> None:
    """Print the effective settings (defaults, file, environment), secrets masked."""
    shown = settings_of(ctx).masked()
    if output_format == "json":
        click.echo(json.dumps(shown, indent=2))
    else:
        click.echo(yaml.safe_dump(shown, sort_keys=False).rstrip())


@config_group.command("reference")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file (docs/settings.md) instead of stdout.",
)
def config_reference(output: Path | None) -> None:
    """Print the settings reference (Markdown), generated from defaults.yaml's comments."""
    from tidings.config.reference import settings_reference

    text = settings_reference()
    if output is None:
        click.echo(text, nl=False)
        return
    output.write_text(text, encoding="utf-8")
    click.echo(f"wrote {output}")
