"""Chat templates: built-ins for base models that ship none, and how a config names one.

The built-ins wrap each assistant turn, *including its end-of-turn token*, in `{% generation %}` markers,
so `return_assistant_tokens_mask` (what TRL's `assistant_only_loss` uses) trains the model to stop.
"""

from __future__ import annotations

from pathlib import Path

from hftune.errors import UserError

CHATML = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

# name -> (template, the token that ends an assistant turn and so must be the generation stop token)
BUILTIN_TEMPLATES: dict[str, tuple[str, str]] = {"chatml": (CHATML, "<|im_end|>")}
CHATML_SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>"]


def resolve_chat_template(spec: str) -> tuple[str, str | None]:
    """A config's `chat_template` value -> (jinja source, end-of-turn token if known).

    `spec` is a built-in name ("chatml"), a path to a `.jinja` file, or a Jinja string.
    """
    if spec in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[spec]
    if "{" in spec or "%" in spec:
        return spec, None
    path = Path(spec)
    if path.suffix in (".jinja", ".j2", ".txt") or path.exists():
        if not path.is_file():
            raise UserError(f"chat_template: file not found: {path}")
        return path.read_text(encoding="utf-8"), None
    raise UserError(
        f"chat_template: {spec!r} is neither a built-in ({', '.join(BUILTIN_TEMPLATES)}), "
        "a .jinja file, nor a Jinja template string"
    )
