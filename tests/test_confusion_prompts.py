"""The benchmark's prompts (mwork.confusion.data, mwork.confusion.prompts): the few-shot text
character for character on hand-written expectations, the chat path, and the errors a wrong
folder, task, language or file gets. No model: files and strings only (the subset in
tests/data/lcb)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mwork.confusion.data import LcbFolder, parse_languages, parse_tasks
from mwork.confusion.prompts import PromptFormat, few_shot_prompt, turns_text, with_instruction

LCB = Path(__file__).resolve().parent / "data" / "lcb"

OKAPI_FR_0 = "Sujet: Utilisation de l'IA pour augmenter les capacités humaines\nExpliquez un malentendu commun sur votre sujet."
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def folder() -> LcbFolder:
    return LcbFolder(LCB)


def test_turns_text_is_the_benchmarks_base_format():
    turns = [{"role": "User", "message": "Hello, how are you?"}, {"role": "Chatbot", "message": "I'm fine and you?"},
             {"role": "User", "message": "How much is 1+1?"}]
    assert turns_text(turns) == "Q: Hello, how are you?\nA: I'm fine and you?\n\nQ: How much is 1+1?\nA:"
    # a prompt ending in a newline keeps it (as the benchmark's text does): a blank line before "A:"
    assert few_shot_prompt([], "Rédigez un article.\n") == "Q: Rédigez un article.\n\nA:"
    # a conversation ending with the chatbot: its blank line is stripped, no "A:" added
    assert turns_text(turns[:2]) == "Q: Hello, how are you?\nA: I'm fine and you?"
    with pytest.raises(ValueError, match="User or Chatbot"):
        turns_text([{"role": "System", "message": "x"}])


def test_zero_shot_prompt_of_a_test_set(folder):
    first = folder.prompts("monolingual", "fr", limit=1)
    assert [(p.task, p.source, p.language, p.number) for p in first] == [
        ("monolingual", "dolly_human_edited", "fr", 0), ("monolingual", "native_prompts", "fr", 0),
        ("monolingual", "okapi", "fr", 0)]
    assert first[2].prompt == OKAPI_FR_0
    assert few_shot_prompt(folder.few_shot("monolingual", "fr", 0), first[2].prompt) == f"Q: {OKAPI_FR_0}\nA:"


def test_one_shot_prompt_character_for_character(folder):
    shots = folder.few_shot("monolingual", "fr", 1)
    assert few_shot_prompt(shots, OKAPI_FR_0) == (
        "Q: How should I choose what cheese to buy?\n"
        "A: There are many different types of cheese, so choosing what cheese to buy depends on personal preference, "
        "availability, and intended use. Washed-rind cheeses are often strongly flavored and runny so are best as a "
        "topping for bread or crackers. Harder cheeses can be eaten as a snack or grated on top of pasta.\n\n"
        "Q: Sujet: Utilisation de l'IA pour augmenter les capacités humaines\n"
        "Expliquez un malentendu commun sur votre sujet.\nA:")
    cross = folder.prompts("crosslingual", "fr", limit=1)
    assert cross[1].source == "okapi" and cross[1].prompt.startswith("Reply in French. Explain a common")
    assert few_shot_prompt(folder.few_shot("crosslingual", "fr", 1), cross[1].prompt) == (
        "Q: Write your answer in Portuguese. How should I choose what cheese to buy?\n"
        "A: Existem muitos tipos diferentes de queijo, portanto, a escolha do queijo comprar depende da preferência "
        "pessoal, da disponibilidade e do uso pretendido. Os queijos de casca lavada costumam ter sabor forte e "
        "líquido, por isso são melhores como cobertura para pães ou biscoitos. Os queijos mais duros podem ser "
        "consumidos como lanche ou ralados em cima da massa.\n\n"
        "Q: Reply in French. Explain a common misconception about your topic.\n"
        "Topic: Using AI to Augment Human Capabilities\nA:")


def test_five_shot_prompt_is_five_pairs_then_the_prompt(folder):
    shots = folder.few_shot("monolingual", "zh", 5)
    assert len(shots) == 10 and [t["role"] for t in shots] == ["User", "Chatbot"] * 5
    text = few_shot_prompt(shots, "你好")
    blocks = text.split("\n\n")
    assert len(blocks) == 6 and blocks[-1] == "Q: 你好\nA:"
    assert blocks[0] == "Q: كيف يجب أن أختار الجبن الذي سأشتريه؟\nA: " + shots[1]["message"]
    assert all(b.startswith("Q: ") and "\nA: " in b for b in blocks[:5])


def test_the_prompt_lever_names_the_language_first():
    assert with_instruction("Écrivez une histoire.", "fr") == "Reply in French. Écrivez une histoire."
    assert with_instruction("写一个故事", "zh") == "Reply in Chinese. 写一个故事"


def test_chat_format_uses_the_template_and_refuses_shots(tiny_models):
    tok = tiny_models.tokenizer()
    tok.chat_template = TEMPLATE
    fmt = PromptFormat(chat=True)
    assert fmt.text(tok, "Bonjour ?") == "<|user|>Bonjour ?<|end|>\n<|assistant|>"
    assert not fmt.add_special_tokens and PromptFormat().add_special_tokens
    with pytest.raises(ValueError, match="give --shots 0 with --chat"):
        PromptFormat(shots=1, chat=True)
    tok.chat_template = None
    tok.name_or_path = "tiny-random-llama"
    with pytest.raises(ValueError, match="tiny-random-llama has no chat template"):
        fmt.text(tok, "Bonjour ?")


def test_unknown_task_language_and_shots_are_clear_errors(folder):
    with pytest.raises(ValueError, match="unknown task 'mono' in --tasks: the benchmark's tasks are monolingual, "
                                         "crosslingual"):
        parse_tasks(("mono",))
    with pytest.raises(ValueError, match="unknown language 'xx' in --langs: the benchmark's languages are ar, de, en"):
        parse_languages(("fr", "xx"))
    with pytest.raises(ValueError, match="each language once"):
        parse_languages(("fr", "fr"))
    with pytest.raises(ValueError, match="--shots must be one of 0, 1, 5"):
        folder.few_shot("monolingual", "fr", 2)
    # a benchmark language the folder has no test set for, in any task asked
    with pytest.raises(ValueError, match="no monolingual or crosslingual test set in de"):
        folder.plan(("monolingual", "crosslingual"), ("fr", "de"))
    plan, notes = folder.plan(("monolingual",), ("fr", "zh"))
    assert plan == {"monolingual": ("fr", "zh")} and notes == []


def test_a_wrong_folder_or_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder; give the Language Confusion Benchmark's folder"):
        LcbFolder(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="has no test_sets/ folder"):
        LcbFolder(tmp_path)
    shutil.copytree(LCB / "test_sets", tmp_path / "test_sets")
    folder = LcbFolder(tmp_path)
    assert folder.few_shot("monolingual", "fr", 0) == []  # no few-shot file needed without shots
    with pytest.raises(FileNotFoundError, match="few_shot_examples.json does not exist"):
        folder.few_shot("monolingual", "fr", 1)
    (tmp_path / "few_shot_examples.json").write_text(json.dumps({"monolingual": {"fr": [
        {"role": "Chatbot", "message": "x"}]}}), encoding="utf-8")
    with pytest.raises(ValueError, match="alternating User and Chatbot"):
        folder.few_shot("monolingual", "fr", 1)
    with pytest.raises(ValueError, match="no crosslingual few-shot turns for fr"):
        folder.few_shot("crosslingual", "fr", 1)
    (tmp_path / "few_shot_examples.json").write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match="not a readable JSON file"):
        folder.few_shot("monolingual", "fr", 1)
    bad = tmp_path / "test_sets" / "monolingual" / "okapi" / "fr.csv"
    bad.write_text("text,source,language\nBonjour,okapi,fr\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"fr.csv has no prompt column \(found: text, source, language\)"):
        folder.prompts("monolingual", "fr")
    bad.write_text('prompt,source,language\n"  ",okapi,fr\n', encoding="utf-8")
    with pytest.raises(ValueError, match="data row 1 has an empty prompt"):
        folder.prompts("monolingual", "fr")
