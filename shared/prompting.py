"""The prompt format both services agree on: four tags, one system prompt, one chat layout.

The model is asked to reason between ``<start_working_out>`` and ``<end_working_out>`` and to put
its final number between ``<SOLUTION>`` and ``</SOLUTION>``; the rewards in ``shared.rewards``
score exactly this layout.

>>> build_prompt("What is 2 + 3?")[1]
{'role': 'user', 'content': 'What is 2 + 3?'}
>>> build_prompt("x")[0]["content"].splitlines()[0]
'You are a mathematical reasoning assistant.'
"""

REASONING_START = "<start_working_out>"
REASONING_END = "<end_working_out>"
SOLUTION_START = "<SOLUTION>"
SOLUTION_END = "</SOLUTION>"
TAGS = (REASONING_START, REASONING_END, SOLUTION_START, SOLUTION_END)

SYSTEM_PROMPT = (
    "You are a mathematical reasoning assistant.\n"
    "When given a math problem:\n"
    f"1. Show your step-by-step work between {REASONING_START} and {REASONING_END}\n"
    f"2. Provide your final numerical answer between {SOLUTION_START} and {SOLUTION_END}\n"
    "3. Be precise and show all calculation steps clearly."
)

Message = dict[str, str]


def build_prompt(question: str) -> list[Message]:
    """The chat messages for one question: the system prompt, then the question as the user turn."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": question},
    ]


def format_reference_completion(reasoning: str, answer: str) -> str:
    """A completion in the target format, used by the supervised format warm-up.

    >>> print(format_reference_completion("2 + 3 = 5", "5"))
    <start_working_out>
    2 + 3 = 5
    <end_working_out>
    <SOLUTION>5</SOLUTION>
    """
    return f"{REASONING_START}\n{reasoning}\n{REASONING_END}\n{SOLUTION_START}{answer}{SOLUTION_END}"
