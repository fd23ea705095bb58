"""What the model reads for a control item, and the prompting lever's instruction.

* ``qa`` items (``xquad-qa``): the XQuAD task's prompt of the source language (the paragraph, the
  question, the answer cue: ``mwork/data/task_prompts/xquad.json``), cut at its stop strings.
* ``text`` items (``xquad-text``, ``mgsm-text``): the source sentence, a new line and a cue that
  asks for it again in other words (:data:`TEXT_CUES`, in the source language), cut at the end of
  the line: the unsteered model restates it in the source language, and a lever that moves the
  language should restate it in the target's (``mwork.control.meaning``'s ``match`` measures
  whether it still says the same thing). With an example (``fields["example"]``, ``--text-shots
  1``), another sentence of the data and the cue followed by that sentence as it is come first,
  a blank line between: a base model otherwise often answers the cue with anything (a list
  marker, a price), and shown once it repeats the sentence it is given.
* the prompting lever (``prompt``, ``prompt+vector``) puts an instruction naming the target
  language before the prompt (:func:`instruction`): in English or in the source language
  (:data:`INSTRUCTIONS`; a source language, or a target named in it, missing from the table has
  no source-language instruction).
* ``chat``: the prompt (with its instruction) as one user turn of the model's chat template
  (``mwork.chat.chat_prompt``), less a leading BOS the tokenizer adds again on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from mwork.control.items import ParallelItem

#: the cue after a text item's sentence, per source language ("in other words:")
TEXT_CUES: dict[str, str] = {
    "en": "In other words:", "zh": "换句话说：", "ru": "Другими словами:", "es": "En otras palabras:",
    "de": "Mit anderen Worten:", "fr": "En d'autres termes :", "it": "In altre parole:", "pt": "Em outras palavras:",
    "ja": "言い換えると：", "el": "Με άλλα λόγια:", "tr": "Başka bir deyişle:", "ar": "بعبارة أخرى:",
    "vi": "Nói cách khác:", "hi": "दूसरे शब्दों में:", "ro": "Cu alte cuvinte:", "th": "กล่าวอีกนัยหนึ่ง:",
    "sw": "Kwa maneno mengine:", "bn": "অন্য কথায়:", "te": "మరో మాటలో చెప్పాలంటే:",
}
TEXT_STOP: tuple[str, ...] = ("\n",)

#: language names in English, for the English instruction
ENGLISH_NAMES: dict[str, str] = {
    "en": "English", "zh": "Chinese", "ru": "Russian", "es": "Spanish", "de": "German", "fr": "French",
    "it": "Italian", "pt": "Portuguese", "ja": "Japanese", "el": "Greek", "tr": "Turkish", "ar": "Arabic",
    "vi": "Vietnamese", "hi": "Hindi", "ro": "Romanian", "th": "Thai", "sw": "Swahili", "bn": "Bengali",
    "te": "Telugu",
}
#: per instruction language: the sentence ({name}: the target language's name) and the names
INSTRUCTIONS: dict[str, tuple[str, dict[str, str]]] = {
    "en": ("Respond in {name}.", ENGLISH_NAMES),
    "zh": ("请用{name}回答。", {"en": "英语", "zh": "中文", "ru": "俄语", "es": "西班牙语", "de": "德语", "fr": "法语"}),
    "ru": ("Отвечай на {name} языке.", {"en": "английском", "zh": "китайском", "ru": "русском", "es": "испанском",
                                         "de": "немецком", "fr": "французском"}),
    "es": ("Responde en {name}.", {"en": "inglés", "zh": "chino", "ru": "ruso", "es": "español", "de": "alemán",
                                   "fr": "francés"}),
    "de": ("Antworte auf {name}.", {"en": "Englisch", "zh": "Chinesisch", "ru": "Russisch", "es": "Spanisch",
                                    "de": "Deutsch", "fr": "Französisch"}),
    "fr": ("Réponds en {name}.", {"en": "anglais", "zh": "chinois", "ru": "russe", "es": "espagnol",
                                  "de": "allemand", "fr": "français"}),
}
#: where an instruction is written: in the source language or in English
INSTRUCTION_LANGUAGES: tuple[str, ...] = ("source", "en")


def instruction(language: str, source: str, target: str) -> str | None:
    """The instruction naming ``target``, written in ``language`` (``"source"``: the source
    language; ``"en"``); None when the table has no such sentence or no name for the target."""
    lang = source if language == "source" else language
    found = INSTRUCTIONS.get(lang)
    if found is None or target not in found[1]:
        return None
    sentence, names = found
    return sentence.format(name=names[target])


def instruction_variants(languages: Sequence[str], source: str, target: str) -> list[str]:
    """The instruction languages that give a distinct instruction for ``source`` -> ``target``
    (``source`` is left out where the source language is itself among ``languages``, e.g. English,
    or where the table cannot write it)."""
    out: list[str] = []
    seen: set[str] = set()
    for language in languages:
        if language == "source" and source in languages:
            continue
        text = instruction(language, source, target)
        if text is not None and text not in seen:
            seen.add(text)
            out.append(language)
    return out


def prompt_problem(item_set_kind: str, source: str) -> str | None:
    """Why items of this kind cannot be prompted in ``source`` (None when they can)."""
    if item_set_kind == "text" and source not in TEXT_CUES:
        return (f"no text prompt in {source!r} (the cue that asks for the sentence again is written for "
                f"{', '.join(sorted(TEXT_CUES))})")
    if item_set_kind == "qa":
        from mwork.tasks.common import prompt_languages

        if source not in prompt_languages("xquad"):
            return f"the XQuAD task has no prompt in {source!r}"
    return None


@dataclass(frozen=True)
class Prompt:
    """The text the model reads for an item (``text``) and where its answer ends (``stop``)."""

    text: str
    stop: tuple[str, ...]


def base_prompt(item: ParallelItem) -> Prompt:
    """An item's prompt without instruction (module docstring)."""
    if item.kind == "qa":
        from mwork.tasks.common import prompt_for

        entry = prompt_for("xquad", item.source)
        return Prompt(entry["template"].format(**item.fields), tuple(entry.get("stop", ())))
    if item.kind == "text":
        if item.source not in TEXT_CUES:
            raise ValueError(prompt_problem("text", item.source) or "")
        cue = TEXT_CUES[item.source]
        text = f"{item.fields['text']}\n{cue}"
        example = item.fields.get("example")
        if example is not None:
            space = "" if cue.endswith("\uff1a") else " "  # a full-width colon takes no space after it
            text = f"{example}\n{cue}{space}{example}\n\n{text}"
        return Prompt(text, TEXT_STOP)
    raise ValueError(f"item {item.id!r} has an unknown kind {item.kind!r}")


def render(item: ParallelItem, instruction_text: str | None = None, *, chat_tokenizer: Any = None) -> Prompt:
    """The prompt of ``item``, after ``instruction_text`` (or none), through the chat template of
    ``chat_tokenizer`` when one is given."""
    base = base_prompt(item)
    text = base.text if instruction_text is None else f"{instruction_text}\n\n{base.text}"
    if chat_tokenizer is not None:
        text = chat_text(chat_tokenizer, text)
    return Prompt(text, base.stop)


def chat_text(tokenizer: Any, message: str) -> str:
    """``message`` as a user turn of ``tokenizer``'s chat template, without the template's BOS when
    the tokenizer adds one itself (the prompt is tokenized with the special tokens, as every
    task's is)."""
    from mwork.chat import chat_prompt

    text = chat_prompt(tokenizer, message)
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos):
        adds = tokenizer("x").input_ids[:1] == [tokenizer.bos_token_id]
        if adds:
            text = text[len(bos):]
    return text
