#!/usr/bin/env python3
"""Chat-template parity fixtures, rendered by transformers and jinja2 themselves.

    ~/.cache/mamba-slm/venv/bin/python tests/parity/make_chat_template_fixtures.py

Needs transformers (v5), tokenizers and jinja2 >= 3.1.6. Writes into fixtures/chat_templates/:

  <template>.json   one real chat template (text written out below from the models' public
                    tokenizer_config.json / chat_template.jinja files), the special tokens its
                    tokenizer passes, and conversations rendered with
                    tokenizer.apply_chat_template(tokenize=False): the output, or the message of the
                    exception the template raised.
  expressions.json  small templates exercising the language (operators, filters, tests, loops,
                    scoping, whitespace control, errors), rendered in transformers' own jinja2
                    environment (utils.chat_template_utils._compile_jinja_template: sandboxed,
                    trim_blocks, lstrip_blocks, loopcontrols, its tojson/raise_exception/namespace).

tests/unit/test_chat_template.cpp checks that the C++ interpreter renders all of them byte for byte.
The output is deterministic (no template here calls strftime_now).
"""
import json
import os

import jinja2
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast
from transformers.utils.chat_template_utils import _compile_jinja_template

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "fixtures", "chat_templates")

# ---- real chat templates

QWEN25 = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

QWEN3 = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""

LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

LLAMA31 = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\n\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

MISTRAL_V01 = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + ' ' }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

# Mistral-7B-Instruct-v0.3's template without its tool-calling branches.
MISTRAL_V03 = r"""{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}

{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}
                {{- tool | tojson }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
            {%- endfor %}
            {{- "][/AVAILABLE_TOOLS]" }}
        {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\n\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""

# HuggingFaceH4/zephyr-7b-beta; TinyLlama-1.1B-Chat-v1.0 ships the same text.
ZEPHYR = """{% for message in messages %}
{% if message['role'] == 'user' %}
{{ '<|user|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'system' %}
{{ '<|system|>
' + message['content'] + eos_token }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>
'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}"""

GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

SMOLLM2 = """{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system
You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>
' }}{% endif %}{{'<|im_start|>' + message['role'] + '
' + message['content'] + '<|im_end|>' + '
'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant
' }}{% endif %}"""

GRANITE3 = """{%- if tools %}
    {{- '<|start_of_role|>available_tools<|end_of_role|>
' }}
    {%- for tool in tools %}
    {{- tool | tojson(indent=4) }}
    {%- if not loop.last %}
        {{- '

' }}
    {%- endif %}
    {%- endfor %}
    {{- '<|end_of_text|>
' }}
{%- endif %}
{%- for message in messages %}
    {%- if message['role'] == 'system' %}
    {{- '<|start_of_role|>system<|end_of_role|>' + message['content'] + '<|end_of_text|>
' }}
    {%- elif message['role'] == 'user' %}
    {{- '<|start_of_role|>user<|end_of_role|>' + message['content'] + '<|end_of_text|>
' }}
    {%- elif message['role'] == 'assistant' %}
    {{- '<|start_of_role|>assistant<|end_of_role|>'  + message['content'] + '<|end_of_text|>
' }}
    {%- elif message['role'] == 'assistant_tool_call' %}
    {{- '<|start_of_role|>assistant<|end_of_role|><|tool_call|>' + message['content'] + '<|end_of_text|>
' }}
    {%- elif message['role'] == 'tool_response' %}
    {{- '<|start_of_role|>tool_response<|end_of_role|>' + message['content'] + '<|end_of_text|>
' }}
    {%- endif %}
    {%- if loop.last and add_generation_prompt %}
    {{- '<|start_of_role|>assistant<|end_of_role|>' }}
    {%- endif %}
{%- endfor %}"""

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city, in °C.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. \"Zürich\""},
                "days": {"type": "integer", "minimum": 1},
            },
            "required": ["city"],
        },
    },
}


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


COMMON_CASES = [
    ("single_user", msgs(("user", "Hello!")), True, {}),
    ("single_user_no_prompt", msgs(("user", "Hello!")), False, {}),
    ("system_multi_turn",
     msgs(("system", "You are terse."), ("user", "What is 2+2?"), ("assistant", "4."), ("user", "And 3+3?")), True, {}),
    ("multi_turn_no_system",
     msgs(("user", "Hi"), ("assistant", "Hello, how can I help?"), ("user", "Tell me a joke."),
          ("assistant", "Why did the chicken cross the road?")), False, {}),
    ("whitespace_and_unicode",
     msgs(("user", "  Ünïcødé ✓ 😀\n\n{{ not a tag }} {% if %} 'single' \"double\" back\\slash\ttab  \n"),
          ("assistant", "\n  Sure.  \n"), ("user", "ok")), True, {}),
    ("empty_content", msgs(("user", "")), True, {}),
    ("roles_not_alternating", msgs(("user", "one"), ("user", "two")), True, {}),
]

TOOL_CASE = ("with_tools", msgs(("system", "Use tools when needed."), ("user", "Weather in Zürich?")), True,
             {"tools": [WEATHER_TOOL]})

TEMPLATES = {
    "chatml": (CHATML, {}, []),
    "qwen2.5": (QWEN25, {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, [
        TOOL_CASE,
        ("tool_messages", msgs(("user", "Weather?"), ("tool", "{\"temp\": 21}"), ("tool", "sunny")), True, {}),
    ]),
    "qwen3": (QWEN3, {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, [
        TOOL_CASE,
        ("thinking_history",
         msgs(("user", "2+2?"), ("assistant", "<think>\nadd them\n</think>\n\n4"), ("user", "3+3?"),
              ("assistant", "<think>\nagain\n</think>\n\n6")), False, {}),
        ("thinking_disabled", msgs(("user", "Hi")), True, {"enable_thinking": False}),
    ]),
    "llama2": (LLAMA2, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, []),
    "llama3": (LLAMA3, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, []),
    "llama3.1": (LLAMA31, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, [
        TOOL_CASE,
        ("tools_in_system", msgs(("user", "Weather in Zürich?")), True,
         {"tools": [WEATHER_TOOL], "tools_in_user_message": False, "date_string": "01 Jan 2025"}),
        ("tool_result", msgs(("user", "Weather?"), ("tool", "{\"temp\": 21}")), True, {}),
        ("builtin_tools", msgs(("system", "sys"), ("user", "hi")), True,
         {"builtin_tools": ["brave_search", "code_interpreter", "wolfram_alpha"]}),
    ]),
    "mistral-v0.1": (MISTRAL_V01, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, [
        ("other_role", msgs(("user", "hi"), ("tool", "result")), True, {}),
    ]),
    "mistral-v0.3": (MISTRAL_V03, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, [
        ("with_tools", msgs(("user", "Weather in Zürich?"), ("assistant", "Let me check."), ("user", "Now?")), True,
         {"tools": [WEATHER_TOOL]}),
    ]),
    "zephyr": (ZEPHYR, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, []),
    "gemma": (GEMMA, {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>"}, []),
    "phi3": (PHI3, {"bos_token": "<s>", "eos_token": "<|endoftext|>", "unk_token": "<unk>"}, []),
    "smollm2": (SMOLLM2, {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>"}, []),
    "granite3": (GRANITE3, {"bos_token": "<|end_of_text|>", "eos_token": "<|end_of_text|>"}, [TOOL_CASE]),
}


def make_tokenizer(special_tokens):
    """A tokenizer whose only role here is to carry the special tokens, as a loaded one does."""
    vocab = {"[UNK]": 0}
    for token in special_tokens.values():
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, **special_tokens)


def render_case(tokenizer, template, messages, add_generation_prompt, extra):
    kwargs = dict(extra)
    tools = kwargs.pop("tools", None)
    try:
        return {"output": tokenizer.apply_chat_template(messages, tools=tools, chat_template=template, tokenize=False,
                                                        add_generation_prompt=add_generation_prompt, **kwargs)}
    except jinja2.TemplateError as e:
        return {"error": str(e)}


def write_template_fixtures():
    for name, (template, special_tokens, extra_cases) in TEMPLATES.items():
        tokenizer = make_tokenizer(special_tokens)
        assert tokenizer.special_tokens_map == special_tokens, tokenizer.special_tokens_map
        cases = []
        for case_name, messages, gen, extra in COMMON_CASES + extra_cases:
            case = {"name": case_name, "messages": messages, "add_generation_prompt": gen}
            if extra:
                case["extra"] = extra
            case.update(render_case(tokenizer, template, messages, gen, extra))
            cases.append(case)
        fixture = {"template": template, "special_tokens": special_tokens, "cases": cases}
        with open(os.path.join(OUT_DIR, f"{name}.json"), "w", encoding="utf-8") as f:
            json.dump(fixture, f, indent=1, ensure_ascii=False)
            f.write("\n")


# ---- the language, piece by piece: (template, variables)

EXPRESSIONS = [
    # output of each type (Python's str())
    ("{{ 1 }}|{{ -7 }}|{{ 1.5 }}|{{ 2.0 }}|{{ 1e-5 }}|{{ 1e16 }}|{{ 0.1 + 0.2 }}|{{ 1/3 }}", {}),
    ("{{ true }}|{{ False }}|{{ none }}|{{ None }}|{{ undefined_name }}|{{ x }}", {"x": None}),
    ("{{ [1, 'a', none, true, 1.5, [2], {'k': \"it's\"}] }}", {}),
    ("{{ {'b': 1, 'a': [1, 2]} }}|{{ d }}", {"d": {"z": 1, "y": {"x": "q\"u'o\nte"}}}),
    ("{{ 'a\\tb\\nc\\\\d\\'e\\\"f\\x41\\u00e9\\U0001F600\\101' }}", {}),
    ('{{ "x" \'y\' "z" }}', {}),
    # arithmetic
    ("{{ 7 + 2 }} {{ 7 - 2 }} {{ 7 * 2 }} {{ 7 / 2 }} {{ 7 // 2 }} {{ 7 % 2 }} {{ 2 ** 10 }} {{ 2 ** -1 }}", {}),
    ("{{ -7 // 2 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ 7.5 // 2 }} {{ -7.5 % 2 }} {{ 2 ** 3 ** 2 }} {{ 10 / 4 * 2 }}", {}),
    ("{{ 1e3 // 0.1 }} {{ 1e3 % 0.1 }} {{ -1e3 // 0.1 }} {{ -0.5 // 1 }} {{ 0.0 * -1 }} {{ (1, 2) * 2 }}", {}),
    ("{{ 1 + 2 * 3 - 4 / 2 }} {{ (1 + 2) * 3 }} {{ -2 ** 2 }} {{ 1 + true }} {{ 1.0 + 1 }}", {}),
    ("{{ 'ab' + 'cd' }} {{ 'ab' * 3 }} {{ 2 * 'x' }} {{ [1] + [2, 3] }} {{ [0] * 3 }}", {}),
    ("{{ 'a' ~ 1 ~ none ~ true ~ undefined_name ~ [1] ~ 2.5 }}", {}),
    ("{{ 'x' ~ 1 * 2 }}|{{ 'a' + 'b' ~ 'c' }}", {}),
    ("{{ 1 ~ 2 + 3 }}", {}),
    ("{{ (1, 'a') }} {{ (1,) }} {{ () }} {{ (1, 2) == [1, 2] }} {{ (1, 2) == (1, 2) }}", {}),
    # comparisons and logic
    ("{{ 1 == 1.0 }} {{ true == 1 }} {{ 'a' == 'a' }} {{ [1, 2] == [1, 2] }} {{ {'a': 1} == {'a': 1} }}", {}),
    ("{{ 1 != 2 }} {{ 1 < 2 }} {{ 2 <= 2 }} {{ 3 > 2 }} {{ 2 >= 3 }} {{ 'a' < 'b' }} {{ 'B' < 'a' }} {{ [1, 2] < [1, 3] }}", {}),
    ("{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 1 == 1 == 1 }}", {}),
    ("{{ 'b' in 'abc' }} {{ 'd' not in 'abc' }} {{ 2 in [1, 2] }} {{ 'k' in d }} {{ 'z' in d }} {{ 'x' in undefined_name }}",
     {"d": {"k": 1}}),
    ("{{ true and 'yes' }}|{{ false and 'yes' }}|{{ 0 or 'fallback' }}|{{ 'first' or 'second' }}|{{ not 0 }}|{{ not 'a' }}",
     {}),
    ("{{ not 1 == 2 }} {{ not x is defined }} {{ 1 if true else 2 }} {{ 1 if false else 2 }} [{{ 1 if false }}]", {}),
    ("{{ 'a' if x else 'b' if y else 'c' }}", {"x": False, "y": True}),
    ("{{ x == y }} {{ x == none }} {{ x is none }}", {"x": None}),
    ("{{ 'abc' == undefined_name }} {{ undefined_name == other_undefined }}", {}),
    # subscripts and attributes
    ("{{ xs[0] }} {{ xs[-1] }} {{ xs[1:] }} {{ xs[:2] }} {{ xs[::-1] }} {{ xs[::2] }} {{ xs[-2:] }} {{ xs[5:] }} [{{ xs[9] }}]",
     {"xs": [1, 2, 3, 4]}),
    ("{{ s[0] }} {{ s[1:3] }} {{ s[::-1] }} {{ s[-1] }} {{ s|length }}", {"s": "héllo✓"}),
    ("{{ m.role }} {{ m['role'] }} {{ m.get('role') }} {{ m.get('missing', 'dflt') }} [{{ m.get('missing') }}] [{{ m.nope }}]",
     {"m": {"role": "user", "content": "hi"}}),
    ("{{ m.items()|list }} {{ m.keys()|list }} {{ m.values()|list }}", {"m": {"a": 1, "b": 2}}),
    ("{{ xs.0 }} {{ nested.a.b[1].c }}", {"xs": ["zero"], "nested": {"a": {"b": [0, {"c": "deep"}]}}}),
    # tests
    ("{{ x is defined }} {{ y is defined }} {{ y is undefined }} {{ x is none }} {{ x is not none }}", {"x": None}),
    ("{{ 'a' is string }} {{ 1 is string }} {{ 1 is number }} {{ 1.5 is number }} {{ true is number }} {{ 1 is integer }} {{ 1.0 is integer }} {{ 1.0 is float }}",
     {}),
    ("{{ true is boolean }} {{ 1 is boolean }} {{ true is true }} {{ 1 is true }} {{ false is false }}", {}),
    ("{{ {} is mapping }} {{ [] is mapping }} {{ [] is sequence }} {{ 'a' is sequence }} {{ 1 is sequence }} {{ 'a' is iterable }} {{ 1 is iterable }}",
     {}),
    ("{{ 3 is odd }} {{ 3 is even }} {{ 9 is divisibleby 3 }} {{ 9 is divisibleby(2) }} {{ 1 is eq 1 }} {{ 1 is equalto(2) }} {{ 1 is lt 2 }} {{ 'a' is in 'abc' }}",
     {}),
    ("{{ range is callable }} {{ 1 is callable }} {{ x is ne 2 }} {{ x is ge 1 }} {{ x is gt 1 }} {{ x is le 1 }}", {"x": 1}),
    # filters
    ("{{ '  a b  '|trim }}|{{ 'xxaxx'|trim('x') }}|{{ 'Hello'|lower }}|{{ 'hello wORLD'|upper }}|{{ 'hello wORLD'|capitalize }}|{{ 'hello wORLD-x (y'|title }}",
     {}),
    ("{{ [1, 2]|length }} {{ 'abc'|length }} {{ {'a': 1}|length }} {{ undefined_name|length }} {{ [1, 2]|count }}", {}),
    ("{{ x|default('d') }} {{ y|default('d') }} {{ none|default('d') }} {{ ''|default('d', true) }} {{ 0|d('zero', boolean=true) }} [{{ x|default }}]",
     {"y": "set"}),
    ("{{ [1, 2, 3]|join(', ') }} {{ ['a', 'b']|join }} {{ ms|join(' ', attribute='role') }} {{ 'abc'|join('-') }}",
     {"ms": [{"role": "user"}, {"role": "assistant"}]}),
    ("{{ [1, 2, 3]|first }} {{ [1, 2, 3]|last }} {{ 'abc'|first }} [{{ []|first }}]", {}),
    ("{{ x|tojson }}", {"x": {"b": [1, 2.5, None, True, "é\n\"\\\u0001"], "a": {}, "c": []}}),
    ("{{ x|tojson(indent=2) }}|{{ x|tojson(sort_keys=true) }}|{{ x|tojson(separators=[',', ':']) }}",
     {"x": {"b": [1, {"c": None}], "a": "✓"}}),
    ("{{ 'é😀'|tojson(ensure_ascii=true) }} {{ 1.0|tojson }} {{ 'x'|tojson }} {{ none|tojson }}", {}),
    ("{{ d|items|list }} {{ undefined_name|items|list }}", {"d": {"a": 1, "b": [2]}}),
    ("{% for k, v in d|items %}{{ k }}={{ v }};{% endfor %}{% for k, v in d.items() %}{{ k }}:{{ v }};{% endfor %}",
     {"d": {"z": 1, "a": 2}}),
    ("{{ 'a-b-c'|replace('-', '+') }} {{ 'aaa'|replace('a', 'b', 2) }} {{ 'ab'|replace('', '.') }}", {}),
    ("{{ [3, 1, 2]|reverse|list }} {{ 'abc'|reverse }} {{ 'abc'|list }} {{ {'a': 1, 'b': 2}|list }}", {}),
    ("{{ 42|string ~ 'x' }} {{ '42'|int + 1 }} {{ '4.7'|int }} {{ 'x'|int }} {{ 'x'|int(7) }} {{ 3.9|int }} {{ '2.5'|float * 2 }} {{ 'q'|float }}",
     {}),
    ("{{ -3|abs }} {{ (-3)|abs }} {{ -2.5|abs }}", {}),
    ("{{ ms|map(attribute='role')|list }} {{ ['A', 'B']|map('lower')|join }} {{ ms|map(attribute='x', default='-')|list }}",
     {"ms": [{"role": "user"}, {"role": "assistant"}]}),
    ("{{ ms|selectattr('role', 'equalto', 'user')|list|length }} {{ ms|rejectattr('role', 'eq', 'user')|map(attribute='role')|join }} {{ ms|selectattr('tool')|list|length }}",
     {"ms": [{"role": "user"}, {"role": "assistant", "tool": 1}, {"role": "user"}]}),
    ("{{ [1, 2, 3, 4]|select('odd')|list }} {{ [1, 2, 3, 4]|reject('odd')|list }} {{ [0, 1, '', 'a']|select|list }} {{ ['a', 'b', 'c']|reject('equalto', 'b')|join(',') }}",
     {}),
    ("{{ [3, 1, 2]|sort }} {{ ['b', 'A', 'a']|sort }} {{ ['b', 'A', 'a']|sort(case_sensitive=true) }} {{ ms|sort(attribute='n', reverse=true)|map(attribute='n')|join }}",
     {"ms": [{"n": 1}, {"n": 3}, {"n": 2}]}),
    ("{{ u is sequence }} {{ 2.0 is even }} {{ 3.0 is odd }} {{ 4.5 is divisibleby 1.5 }}", {}),
    # str methods
    ("[{{ '  x  '.strip() }}] [{{ '  x  '.lstrip() }}] [{{ '  x  '.rstrip() }}] [{{ '\\n\\nx\\n'.strip('\\n') }}] [{{ 'abcxa'.strip('ab') }}]",
     {}),
    ("{{ 'hello'.startswith('he') }} {{ 'hello'.endswith('lo') }} {{ 'hello'.startswith(('x', 'h')) }} {{ 'hello'.endswith('x') }}",
     {}),
    ("{{ 'a,b,,c'.split(',') }} {{ '  a  b c '.split() }} {{ 'a b c'.split(' ', 1) }} {{ '  a  b c '.split(none, 1) }} {{ 'x</think>y'.split('</think>')[-1] }}",
     {}),
    ("{{ 'Hello World'.upper() }} {{ 'Hello World'.lower() }} {{ 'hello world'.title() }} {{ 'hELLO'.capitalize() }} {{ 'a.b.c'.replace('.', '/') }}",
     {}),
    ("{{ s.strip() }}|{{ s.split('\\n')|length }}", {"s": "\u3000 x\u00a0y \n"}),
    ("{{ s.title() }}|{{ s|title }}|{{ s.capitalize() }}|{{ s|upper }}", {"s": "they're o'neil's 2nd-best (éclair) ǆ"}),
    # statements: if / for / set / namespace / macro / loop controls
    ("{% if x %}a{% elif y %}b{% else %}c{% endif %}{% if not x %}!{% endif %}", {"x": 0, "y": 1}),
    ("{% for x in xs %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.revindex0 }}/{{ loop.length }}/{{ loop.first }}/{{ loop.last }} {% endfor %}",
     {"xs": "abc"}),
    ("{% for x in xs %}[{{ loop.previtem }}<{{ x }}>{{ loop.nextitem }}]{{ loop.cycle('o', 'e') }}{% endfor %}", {"xs": [1, 2, 3]}),
    ("{% for x in xs if x != 2 %}{{ loop.index }}:{{ x }}/{{ loop.length }} {% endfor %}", {"xs": [1, 2, 3]}),
    ("{% for x in [] %}body{% else %}empty{% endfor %}|{% for x in none_list %}{% else %}undefined is empty{% endfor %}", {}),
    ("{% for k in {'b': 1, 'a': 2} %}{{ k }}{% endfor %}{% for a, b in [[1, 2], [3, 4]] %}{{ a + b }}{% endfor %}", {}),
    ("{% for x in range(5) %}{% if x == 1 %}{% continue %}{% endif %}{% if x == 3 %}{% break %}{% endif %}{{ x }}{% endfor %}|{{ range(2, 8, 3)|list }}|{{ range(3, 0, -1)|list }}",
     {}),
    ("{% for row in [[1, 2], [3]] %}{% for x in row %}{{ loop.index }}{{ x }}{% endfor %}/{{ loop.index }};{% endfor %}", {}),
    ("{% set x = 0 %}{% for i in range(3) %}{{ x }}{% set x = x + 1 %}{{ x }},{% endfor %}{{ x }}", {}),
    ("{% for i in range(3) %}{% if i == 0 %}{% set y = 5 %}{% endif %}[{{ y }}]{% endfor %}[{{ y }}]", {}),
    ("{% if true %}{% set z = 3 %}{% endif %}{{ z }}", {}),
    ("{% set ns = namespace(found=false, n=0) %}{% for m in ms %}{% if m == 'b' %}{% set ns.found = true %}{% endif %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.found }} {{ ns.n }} {{ ns.missing is defined }}",
     {"ms": ["a", "b", "c"]}),
    ("{% set ns = namespace() %}{% set ns.items = [] %}{% for i in range(3) %}{% set ns.items = ns.items + [i * i] %}{% endfor %}{{ ns.items }} {{ ns }}",
     {}),
    ("{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set t = 1, 2 %}{{ t }}{% set c = (3, 4) %}{{ c[1] }}", {}),
    ("{% set messages = messages[1:] %}{{ messages|length }}", {"messages": [1, 2, 3]}),
    ("{% set block %}inner {{ 1 + 1 }}{% endset %}[{{ block }}]", {}),
    ("{% macro greet(name, greeting='Hello') %}{{ greeting }}, {{ name }}!{% endmacro %}{{ greet('Ann') }} {{ greet('Bob', greeting='Hi') }} {{ greet(greeting='Yo', name='Cy') }}",
     {}),
    ("{% macro t(x) %}{% if x is string %}{{ x }}{% elif x is mapping %}{{ x|tojson }}{% else %}{% for p in x %}{{ t(p) }}{% endfor %}{% endif %}{% endmacro %}{{ t(['a', {'b': 1}, ['c']]) }}",
     {}),
    ("{% generation %}assistant text{% endgeneration %}", {}),
    ("{{ dict(a=1, b='x') }} {{ dict({'z': 0}, y=1) }} {{ namespace(q=2).q }}", {}),
    # whitespace control, trim_blocks, lstrip_blocks, comments
    ("a\n  {% if true %}\n    b\n  {% endif %}\nc\n", {}),
    ("a  {%- if true -%}  b  {%- endif -%}  c", {}),
    ("a\n  {{- 'x' -}}\n  b {{ 'y' }}\nc", {}),
    ("  {% if true %}x{% endif %}  \n  {%+ if true %}y{% endif %}\n{% if true +%}\nz{% endif %}", {}),
    ("line1\n    {# a comment #}\nline2 {#- trimmed -#}   line3\n{# end #}\n", {}),
    ("{% for x in xs %}\n  - {{ x }}\n{% endfor %}\n", {"xs": [1, 2]}),
    ("{%- for x in xs -%}\n  {{ x }}\n{%- endfor %}", {"xs": [1, 2]}),
    ("text\r\nwith\rcrlf\n{% if true %}\r\nx{% endif %}\n\n", {}),
    ("  {{ 'indented output keeps its indent' }}\n\t{% set q = 1 %}\nafter", {}),
    ("{{ {'a': {'b': 1}} }}{{ {'a': {'b': 1}}['a']['b'] }}", {}),
    # errors (the raise_exception message is compared exactly; the others only have to fail)
    ("{{ raise_exception('Bad roles: ' ~ n) }}", {"n": 2}),
    ("{% if x %}{{ raise_exception('only when x') }}{% endif %}ok", {"x": False}),
    ("{{ undefined_name.attr }}", {}),
    ("{{ undefined_name + 1 }}", {}),
    ("{{ m.a.b }}", {"m": {}}),
    ("{{ 1 + 'a' }}", {}),
    ("{{ 1 / 0 }}", {}),
    ("{{ n[1:] }}", {"n": 5}),
    ("{{ [1] + (2,) }}", {}),
    ("{{ [1] in {'a': 1} }}", {}),
    ("{{ none|length }}", {}),
    ("{% for x in none %}{% endfor %}", {}),
    ("{{ undefined_name() }}", {}),
    ("{{ 'a' < 1 }}", {}),
    ("{{ x|tojson }}", {}),
    ("{% set ns = namespace() %}{% set ns._hidden = 1 %}", {}),
    ("{% set x = 1 %}{% set x.attr = 2 %}", {}),
    ("{{ range(1000000)|length }}", {}),
    ("{% if x %}", {}),
    ("{% for x in xs %}{% endif %}", {}),
    ("{{ 1 +  }}", {}),
    ("{{ 'unterminated }}", {}),
    ("{% unknown_tag %}", {}),
    ("{{ x | nosuchfilter }}", {"x": 1}),
    ("{{ x is nosuchtest }}", {"x": 1}),
    ("{# unterminated comment", {}),
    ("{{ (1 }}", {}),
    ("{% break %}", {}),
]


def write_expression_fixture():
    cases = []
    for template, variables in EXPRESSIONS:
        case = {"template": template, "variables": variables}
        try:
            case["output"] = _compile_jinja_template(template).render(**variables)
        except jinja2.exceptions.TemplateSyntaxError as e:
            case["error"] = {"type": "syntax", "message": e.message}
        except jinja2.TemplateError as e:
            case["error"] = {"type": type(e).__name__, "message": str(e)}
        except Exception as e:  # Python's own errors raised through the template (TypeError, ...)
            case["error"] = {"type": type(e).__name__, "message": str(e)}
        cases.append(case)
    with open(os.path.join(OUT_DIR, "expressions.json"), "w", encoding="utf-8") as f:
        json.dump({"cases": cases}, f, indent=1, ensure_ascii=False)
        f.write("\n")


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    write_template_fixtures()
    write_expression_fixture()


if __name__ == "__main__":
    main()
