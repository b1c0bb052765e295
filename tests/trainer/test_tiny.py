"""The tiny model and tokenizer: built in code, deterministic, saved and loaded as HF dirs."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, Qwen2ForCausalLM

from referee.trainer import tiny


def test_tokenizer_ids_are_stable_and_round_trip():
    tok = tiny.build_tokenizer("0123456789+=")
    assert tok("12+3=").input_ids == [6, 7, 15, 8, 16]
    assert tok.decode([6, 7, 15, 8, 16]) == "12+3="
    assert len(tok) == 5 + 12
    assert (tok.pad_token, tok.eos_token, tok.unk_token) == ("<pad>", "<|im_end|>", "<unk>")
    assert (tok.pad_token_id, tok.eos_token_id) == (0, 4)
    assert tok.bos_token_id is None


def test_default_tokenizer_covers_text_with_newlines_and_specials():
    tok = tiny.build_tokenizer()
    assert len(tok) == 101
    text = "Q: What is 12 * (3 - 4)?\nA: -12."
    ids = tok(text).input_ids
    assert len(ids) == len(text)  # one token per character, no BOS
    assert tok.decode(ids) == text
    # Specials are single tokens; characters outside the alphabet are <unk>.
    assert tok("<|im_start|>x<|im_end|>").input_ids == [3, tok.convert_tokens_to_ids("x"), 4]
    assert tok("é").input_ids == [tok.unk_token_id]
    assert tok.decode([3, 4, 0], skip_special_tokens=True) == ""


def test_chat_template_renders_qwen_style():
    tok = tiny.build_tokenizer()
    messages = [{"role": "system", "content": "Add."}, {"role": "user", "content": "1+2"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nAdd.<|im_end|>\n"
        "<|im_start|>user\n1+2<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    full = messages + [{"role": "assistant", "content": "3"}]
    assert tok.apply_chat_template(full, tokenize=False).endswith(
        "<|im_start|>assistant\n3<|im_end|>\n"
    )
    ids = tiny.encode_chat(tok, messages)
    assert tok.decode(ids, skip_special_tokens=False) == text
    assert ids[:1] == [tok.convert_tokens_to_ids("<|im_start|>")]


def test_presets_have_the_documented_sizes_and_tied_embeddings():
    tok = tiny.build_tokenizer()
    sizes = {p: tiny.count_parameters(tiny.build_model(p, tokenizer=tok)) for p in tiny.PRESETS}
    assert sizes == {"tiny": 105_088, "small": 800_512}
    model = tiny.build_model("tiny", tokenizer=tok)
    assert isinstance(model, LlamaForCausalLM)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.config.eos_token_id == [4, 1]  # <|im_end|>, <eos>
    assert model.config.pad_token_id == 0
    assert next(model.parameters()).dtype == torch.float32
    assert isinstance(tiny.build_model("tiny", tokenizer=tok, arch="qwen2"), Qwen2ForCausalLM)


def test_build_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = tiny.build_model("tiny", vocab_size=50, seed=1)
    assert torch.equal(torch.rand(3), expected)
    b = tiny.build_model("tiny", vocab_size=50, seed=1)
    c = tiny.build_model("tiny", vocab_size=50, seed=2)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)
    assert a.config.eos_token_id is None  # no tokenizer: no made-up special ids


def test_save_load_round_trip(tmp_path):
    tok = tiny.build_tokenizer()
    model = tiny.build_model("tiny", tokenizer=tok, seed=3)
    tiny.save(tmp_path, model, tok)
    loaded, loaded_tok = tiny.load_model(tmp_path), tiny.load_tokenizer(tmp_path)
    for (name, p), q in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    ids = torch.tensor([tiny.encode_chat(tok, [{"role": "user", "content": "7*8"}])])
    with torch.no_grad():
        assert torch.equal(model.eval()(ids).logits, loaded.eval()(ids).logits)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert loaded_tok.get_vocab() == tok.get_vocab()
    assert loaded_tok.chat_template == tok.chat_template
    assert (loaded_tok.pad_token_id, loaded_tok.eos_token_id) == (0, 4)
    # Generic loaders (what `referee serve rollout --model PATH` uses) agree.
    auto_tok = AutoTokenizer.from_pretrained(tmp_path)
    assert auto_tok("12 + 3\n").input_ids == tok("12 + 3\n").input_ids
    assert isinstance(AutoModelForCausalLM.from_pretrained(tmp_path), LlamaForCausalLM)
