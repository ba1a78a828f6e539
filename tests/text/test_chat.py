"""Tests of score_jax.text.chat: layouts by hand, and ids equal to the official chat templates.

Each family's official Jinja chat template (the "chat_template" value of the model's
tokenizer_config.json, JSON-decoded) is run by transformers' `apply_chat_template`
on a tiny byte-level BPE tokenizer trained here with the family's special tokens.
Our rendering, tokenized by our `HFTokenizer` loaded from the saved tokenizer files,
must give the same ids.
"""

import pytest

from score_jax.text import chat
from score_jax.text import tokenizer as tk

# google/gemma-1.1-2b-it, gemma-1.1-7b-it, gemma-2-{2b,9b,27b}-it tokenizer_config.json.
# Seen verbatim in the mirror huggingface.co/unsloth/gemma-1.1-2b-it-bnb-4bit (commit
# b044d3b) and in a copy labelled "gemma2"; the first google/gemma-7b-it release had the
# same template without the leading "{{ bos_token }}" (llama.cpp tests/test-chat-template.cpp).
GEMMA_TEMPLATE = (
    r"{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role "
    r"not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == "
    r"'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must "
    r"alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == "
    r"'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    r"{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + "
    r"'<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}"
    r"{{'<start_of_turn>model\n'}}{% endif %}")

# meta-llama/Meta-Llama-3-8B-Instruct (and -70B-Instruct) tokenizer_config.json, as in the
# diff huggingface.co/catid/cat-llama-3-8b-instruct-aqlm-noft commit f9b1eb6 ("Add files
# from Meta-Llama-3-8B-Instruct") and llama.cpp's "Llama-3" test case.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] "
    "| trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

# Qwen/Qwen2-*-Instruct tokenizer_config.json, as in the copy
# huggingface.co/alanzhai219/Qwen2-7B-Instruct-openvino (tokenizer_config.json).
QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

# Qwen/Qwen2.5-*-Instruct tokenizer_config.json, as printed by llama.cpp's
# convert_hf_to_gguf.py for Qwen2.5-0.5B-Instruct ("Setting chat_template to ...").
QWEN25_TEMPLATE = r"""{%- if tools %}
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

# family -> (template, special tokens, bos, eos, pad)
FAMILIES = {
    "gemma": (GEMMA_TEMPLATE, ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>",
                               "<end_of_turn>"], "<bos>", "<eos>", "<pad>"),
    "llama3": (LLAMA3_TEMPLATE, ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                 "<|end_header_id|>", "<|eot_id|>"],
               "<|begin_of_text|>", "<|eot_id|>", None),
    "qwen2": (QWEN2_TEMPLATE, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
              None, "<|im_end|>", "<|endoftext|>"),
    "qwen2.5": (QWEN25_TEMPLATE, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                None, "<|im_end|>", "<|endoftext|>"),
}

PROBLEM = "  What is $2+3$? Give the answer in \\boxed{}.\n"   # stripped by gemma / llama3
Y1 = "We add: 2+3 = 6, so \\boxed{6}. "
INSTRUCTION = ("There might be an error in the solution above because of lack of understanding "
               "of the question. Please correct the error, if any, and rewrite the solution.")
Y2 = "Ünïcödé check ✓: 2+3 = 5, so \\boxed{5}."
TURNS = [("user", PROBLEM), ("model", Y1), ("user", INSTRUCTION), ("model", Y2)]


def _messages(turns, system=None):
  msgs = [{"role": "system", "content": system}] if system is not None else []
  return msgs + [{"role": "assistant" if r == "model" else r, "content": t} for r, t in turns]


@pytest.fixture(scope="module")
def family_tokenizers(tmp_path_factory):
  """family -> (transformers tokenizer with the official template, our HFTokenizer)."""
  import transformers  # pylint: disable=import-outside-toplevel
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # pylint: disable=import-outside-toplevel
  corpus = [PROBLEM, Y1, INSTRUCTION, Y2, "user model assistant system helpful"] * 5
  out = {}
  for family, (template, specials, bos, eos, pad) in FAMILIES.items():
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(corpus, trainer=trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    kwargs = {k: v for k, v in (("bos_token", bos), ("eos_token", eos), ("pad_token", pad)) if v}
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, chat_template=template,
                                              **kwargs)
    d = tmp_path_factory.mktemp(family.replace(".", "_"))
    hf.save_pretrained(str(d))
    out[family] = (hf, tk.load_tokenizer(d))
  return out


def _hf_ids(hf, messages, add_generation_prompt=False):
  return list(hf.apply_chat_template(messages, tokenize=True, return_dict=False,
                                     add_generation_prompt=add_generation_prompt))


# ----------------------------------------------------------------------------- official templates

@pytest.mark.parametrize("family", list(FAMILIES))
def test_two_turn_conversation_matches_official_template(family_tokenizers, family):
  hf, ours = family_tokenizers[family]
  fmt = chat.chat_format(family)
  expected = _hf_ids(hf, _messages(TURNS))
  # Same text first (a readable failure), then the same ids.
  bos = hf.bos_token if fmt.add_bos else ""
  assert bos + chat.render_conversation(fmt, TURNS) == hf.apply_chat_template(
      _messages(TURNS), tokenize=False)
  assert ours.encode(chat.render_conversation(fmt, TURNS), add_bos=fmt.add_bos) == expected
  assert (ours.bos_id is not None) == fmt.add_bos


@pytest.mark.parametrize("family", list(FAMILIES))
def test_rollout_pieces_match_official_generation_prompts(family_tokenizers, family):
  """first_turn / second_turn ids, joined around y1's ids, equal the templates' prompts."""
  hf, ours = family_tokenizers[family]
  fmt = chat.chat_format(family)
  eot = chat.end_of_turn_id(fmt, ours)
  turn1 = chat.first_turn_ids(fmt, ours, PROBLEM)
  assert turn1 == _hf_ids(hf, _messages(TURNS[:1]), add_generation_prompt=True)
  y1_ids = ours.encode(Y1.strip() if fmt.strip else Y1)
  turn2 = turn1 + y1_ids + [eot] + chat.second_turn_ids(fmt, ours, INSTRUCTION)
  assert turn2 == _hf_ids(hf, _messages(TURNS[:3]), add_generation_prompt=True)
  y2_ids = ours.encode(Y2.strip() if fmt.strip else Y2)
  full = turn2 + y2_ids + [eot] + ours.encode(fmt.model_suffix)
  assert full == _hf_ids(hf, _messages(TURNS))


@pytest.mark.parametrize("family", ["llama3", "qwen2", "qwen2.5"])
def test_system_message_matches_official_template(family_tokenizers, family):
  hf, ours = family_tokenizers[family]
  system = "Please reason step by step, and put your final answer within \\boxed{}."
  fmt = chat.chat_format(family, system=system)
  assert (ours.encode(chat.render_conversation(fmt, TURNS), add_bos=fmt.add_bos)
          == _hf_ids(hf, _messages(TURNS, system=system)))


# ----------------------------------------------------------------------------- layouts by hand

def test_layouts_by_hand():
  g = chat.chat_format("gemma")
  assert g.first_turn(" 2+2? ") == "<start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\n"
  assert g.second_turn("p") == "\n<start_of_turn>user\np<end_of_turn>\n<start_of_turn>model\n"
  assert g.end_of_turn == "<end_of_turn>" and g.add_bos
  l3 = chat.chat_format("llama3")
  assert l3.first_turn("x") == ("<|start_header_id|>user<|end_header_id|>\n\nx<|eot_id|>"
                                "<|start_header_id|>assistant<|end_header_id|>\n\n")
  assert l3.second_turn("p") == ("<|start_header_id|>user<|end_header_id|>\n\np<|eot_id|>"
                                 "<|start_header_id|>assistant<|end_header_id|>\n\n")
  q = chat.chat_format("qwen2")
  assert q.first_turn(" x") == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                                "<|im_start|>user\n x<|im_end|>\n<|im_start|>assistant\n")
  assert q.second_turn("p") == "\n<|im_start|>user\np<|im_end|>\n<|im_start|>assistant\n"
  assert not q.add_bos and q.end_of_turn == "<|im_end|>"
  assert chat.chat_format("qwen2.5").first_turn("x").startswith(
      "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.")
  p = chat.chat_format("plain")
  assert p.first_turn("x") == "x\n\n" and p.second_turn("p") == "\n\np\n\n"
  assert chat.render_conversation(p, [("user", "x"), ("model", "y"), ("user", "p")]) == (
      "x\n\ny<eot>\n\np\n\n")


def test_plain_format_with_char_tokenizer_ids_by_hand():
  tok = tk.CharTokenizer("12+=\n")  # pad0 bos1 eos2 eot3; '1'=4 '2'=5 '+'=6 '='=7 '\n'=8
  fmt = chat.chat_format("plain")
  assert chat.end_of_turn_id(fmt, tok) == 3
  assert chat.first_turn_ids(fmt, tok, "1+1=") == [1, 4, 6, 4, 7, 8, 8]
  assert chat.second_turn_ids(fmt, tok, "2") == [8, 8, 5, 8, 8]
  text = chat.render_conversation(fmt, [("user", "1+1="), ("model", "2"), ("user", "2"),
                                        ("model", "2")])
  assert tok.encode(text, add_bos=True) == [1, 4, 6, 4, 7, 8, 8, 5, 3, 8, 8, 5, 8, 8, 5, 3, 8, 8]


def test_gemma_format_with_sentencepiece(tmp_path):
  """Gemma's own tokenizer kind: markers are single pieces; the pieces join up exactly."""
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel
  (tmp_path / "c.txt").write_text("\n".join([PROBLEM, Y1, INSTRUCTION, Y2] * 20), encoding="utf-8")
  spm.SentencePieceTrainer.train(
      input=str(tmp_path / "c.txt"), model_prefix=str(tmp_path / "g"), vocab_size=400,
      model_type="bpe", user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
      pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
      bos_piece="<bos>", unk_piece="<unk>", byte_fallback=True, add_dummy_prefix=False,
      remove_extra_whitespaces=False, normalization_rule_name="identity",
      character_coverage=1.0, minloglevel=2)
  tok = tk.load_tokenizer(tmp_path / "g.model")
  fmt = chat.chat_format("gemma")
  eot = chat.end_of_turn_id(fmt, tok)
  assert eot == 5
  turn1 = chat.first_turn_ids(fmt, tok, PROBLEM)
  assert turn1[:2] == [2, 4] and turn1.count(5) == 1
  joined = (turn1 + tok.encode(Y1.strip()) + [eot] + chat.second_turn_ids(fmt, tok, INSTRUCTION)
            + tok.encode(Y2.strip()) + [eot] + tok.encode("\n"))
  assert joined == tok.encode(chat.render_conversation(fmt, TURNS), add_bos=True)
  assert tok.decode(joined, skip_special=True) == tok.decode(
      [i for i in joined if i not in (2, 4, 5)])


# ----------------------------------------------------------------------------- errors

def test_errors():
  with pytest.raises(ValueError, match="unknown chat format 'gemma4'"):
    chat.chat_format("gemma4")
  with pytest.raises(ValueError, match="no system turn"):
    chat.chat_format("gemma", system="be brief")
  with pytest.raises(ValueError, match="only 'plain'"):
    chat.chat_format("llama3", end_of_turn="<|end_of_text|>")
  fmt = chat.chat_format("plain")
  with pytest.raises(ValueError, match="turn 1 has role 'user'"):
    chat.render_conversation(fmt, [("user", "a"), ("user", "b")])
  with pytest.raises(ValueError, match="turn 0 has role 'model'"):
    chat.render_conversation(fmt, [("model", "a")])
  with pytest.raises(ValueError, match="at least one turn"):
    chat.render_conversation(fmt, [])
  with pytest.raises(ValueError, match="turn 0 is"):
    chat.render_conversation(fmt, ["hello"])


def test_end_of_turn_id_needs_a_single_token(tmp_path):
  from tokenizers import Tokenizer, models, pre_tokenizers  # pylint: disable=import-outside-toplevel
  raw = Tokenizer(models.WordLevel({"[UNK]": 0, "<|endoftext|>": 1, "x": 2}, unk_token="[UNK]"))
  raw.pre_tokenizer = pre_tokenizers.Whitespace()
  raw.add_special_tokens(["<|endoftext|>"])
  raw.save(str(tmp_path / "tokenizer.json"))
  tok = tk.load_tokenizer(tmp_path)
  with pytest.raises(ValueError, match="'<eot>', which is not a single token"):
    chat.end_of_turn_id(chat.chat_format("plain"), tok)
  base = chat.chat_format("plain", end_of_turn="<|endoftext|>")
  assert chat.end_of_turn_id(base, tok) == 1 == tok.eos_id
  # Given the tokenizer, "plain" falls back to its EOS piece when it has no "<eot>" ...
  auto = chat.chat_format("plain", tokenizer=tok)
  assert auto.end_of_turn == "<|endoftext|>" and chat.end_of_turn_id(auto, tok) == 1
  assert chat.render_conversation(auto, [("user", "x"), ("model", "x")]) == (
      "x\n\nx<|endoftext|>\n\n")
  # ... keeps "<eot>" when the tokenizer has it, and leaves the chat families alone.
  char = tk.CharTokenizer("x")
  assert chat.chat_format("plain", tokenizer=char).end_of_turn == "<eot>"
  assert chat.chat_format("gemma", tokenizer=tok).end_of_turn == "<end_of_turn>"
