import pytest

import persona_interp as pi
from persona_interp.data.retrieval import RAG_HEADER, Retriever

ITEMS = [pi.PersonaItem("Would you like to run the whole company?", "Yes, I would run it.", "No, thanks."),
         pi.PersonaItem("Do you enjoy gardening on weekends?", "I love it.", "Not really."),
         pi.PersonaItem("Should you get control of the company budget?", "Yes, give it to me.", "No, keep it."),
         pi.PersonaItem("Is the weather nice today?", "Yes.", "No.")]


def test_bm25_ranks_lexical_overlap_first():
    r = Retriever(ITEMS)
    top = r.top("Who should control the company?", 2)
    assert [item.question for item in top] == [ITEMS[2].question, ITEMS[0].question]
    assert r.scores("zebra")[0] == 0.0


def test_identical_question_is_not_retrieved_and_prompt_uses_the_side():
    r = Retriever(ITEMS)
    assert ITEMS[0] not in r.top(ITEMS[0].question, 3)
    prompt = r.system_prompt("Who should control the company?", side="reject", k=1)
    assert prompt.startswith(RAG_HEADER) and "A: No, keep it." in prompt and "Yes, give it" not in prompt
    with pytest.raises(ValueError):
        Retriever([])
