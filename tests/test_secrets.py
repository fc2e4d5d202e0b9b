"""Secrets never printed or written: what counts as one, and how each place masks it."""

from pytest_llmperf.secrets import MASK, Redactor, argv_secrets, env_secrets, redact_argv, redact_env


def test_env_names_with_key_token_secret_or_password_are_masked():
    env = {"VLLM_API_KEY": "sk-1", "HF_TOKEN": "hf_x", "DB_PASSWORD": "pw", "MY_Secret": "s", "VLLM_USE_DEEP_GEMM": "1"}
    assert redact_env(env) == {"VLLM_API_KEY": MASK, "HF_TOKEN": MASK, "DB_PASSWORD": MASK, "MY_Secret": MASK,
                               "VLLM_USE_DEEP_GEMM": "1"}
    assert sorted(env_secrets(env)) == ["hf_x", "pw", "s", "sk-1"]


def test_flags_ending_in_key_or_token_have_their_values_masked_in_both_forms():
    argv = ["vllm", "serve", "m", "--api-key", "sk-1", "--hf-token=hf_x", "--ssl-keyfile", "k.pem", "-tp", "8",
            "--api-key"]
    assert redact_argv(argv) == ["vllm", "serve", "m", "--api-key", MASK, "--hf-token=" + MASK, "--ssl-keyfile",
                                 "k.pem", "-tp", "8", "--api-key"]
    assert argv_secrets(argv) == ["sk-1", "hf_x"]
    counts = ["--max-num-batched-tokens", "8192", "--max_num_tokens=16384", "--speculative-num-draft-tokens", "2",
              "--ssl-keyfile", "k.pem", "--keyfile", "k.pem", "--token", "t-1"]
    assert redact_argv(counts) == counts[:-1] + [MASK]  # counts of tokens are no secrets; a --token is
    assert argv_secrets(counts) == ["t-1"]


def test_the_redactor_scrubs_text_and_data_and_leaves_short_values_to_position():
    r = Redactor(["sk-abcdef-long", "sk-abcdef", "false", "test"], keys=["sk-x"])
    # longest first; short values ("false", "test") are masked by position only, never in free text
    assert r.scrub("key sk-abcdef-long and sk-abcdef; ignore_eos false; pytest") == \
        f"key {MASK} and {MASK}; ignore_eos false; pytest"
    assert r.scrub("Bearer sk-x") == f"Bearer {MASK}"  # the API key, however short
    assert r.scrub_data({"argv": ["--k", "sk-abcdef"], "n": 1, "sk-abcdef": True}) == \
        {"argv": ["--k", MASK], "n": 1, MASK: True}
    assert Redactor().scrub_data({"a": "sk-abcdef"}) == {"a": "sk-abcdef"}
