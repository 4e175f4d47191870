"""Chat templates: built-ins for base models that ship none, and how a config names one.

The built-ins wrap each assistant turn, *including its end-of-turn token*, in `{% generation %}` markers,
so `return_assistant_tokens_mask` (what TRL's `assistant_only_loss` uses) trains the model to stop.
"""

from __future__ import annotations

from pathlib import Path

from hftune.errors import UserError

# Tools follow Qwen2.5's layout (schemas listed in the system turn inside <tools></tools>, calls as
# <tool_call> JSON, results as a user-side <tool_response> block) with a shorter instruction, since a small
# model pays for every token of it in every row; a conversation without tools renders exactly as before
# tools were added. A call's `arguments` is printed as is when it is a string (hftune keeps them JSON
# strings, see hftune.data.converters), as Qwen3's template does; Qwen2.5's would `tojson` it into a
# quoted string.
_CHATML_TOOLS_SYSTEM = (
    "{%- if tools -%}"
    "{{ '<|im_start|>system\\n' }}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{ messages[0]['content'] + '\\n\\n' }}"
    "{%- endif -%}"
    "{{ '# Tools\\n\\nYou may call these functions:\\n<tools>' }}"
    "{%- for tool in tools -%}{{ '\\n' + (tool | tojson) }}{%- endfor -%}"
    "{{ '\\n</tools>\\n\\nTo call one, reply with <tool_call>\\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call><|im_end|>\\n\' }}'
    "{%- endif -%}"
)
# The calls sit inside the generation markers: they are what the assistant must learn to say.
_CHATML_TOOL_CALLS = (
    "{% generation %}"
    "{%- if message['content'] -%}{{ message['content'] + '\\n' }}{%- endif -%}"
    "{%- for call in message['tool_calls'] -%}"
    "{%- set call = call['function'] if call['function'] is defined else call -%}"
    "{%- if not loop.first -%}{{ '\\n' }}{%- endif -%}"
    "{{ '<tool_call>\\n{\"name\": \"' + call['name'] + '\", \"arguments\": ' }}"
    "{%- if call['arguments'] is string -%}{{ call['arguments'] }}"
    "{%- else -%}{{ call['arguments'] | tojson }}{%- endif -%}"
    "{{ '}\\n</tool_call>' }}"
    "{%- endfor -%}"
    "{{ '<|im_end|>' }}{% endgeneration %}"
)
# Consecutive tool results share one user turn, as in Qwen2.5.
_CHATML_TOOL_RESULT = (
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' -%}"
    "{{ '<|im_start|>user' }}"
    "{%- endif -%}"
    "{{ '\\n<tool_response>\\n' + message['content'] + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' -%}{{ '<|im_end|>\\n' }}{%- endif -%}"
)
CHATML = (
    _CHATML_TOOLS_SYSTEM + "{%- for message in messages -%}"
    "{%- if tools and loop.first and message['role'] == 'system' -%}"  # already in the tools system turn
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- if message['tool_calls'] -%}" + _CHATML_TOOL_CALLS + "{%- else -%}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{%- endif -%}"
    "{{ '\\n' }}"
    "{%- elif message['role'] == 'tool' -%}" + _CHATML_TOOL_RESULT + "{%- else -%}"
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
