"""The prompt format both services agree on: four tags, one system prompt, one chat layout.

The model is asked to reason between ``<start_working_out>`` and ``<end_working_out>`` and to put
its final number between ``<SOLUTION>`` and ``</SOLUTION>``; the rewards in ``shared.rewards``
score exactly this layout.

>>> build_prompt("What is 2 + 3?")[1]
{'role': 'user', 'content': 'What is 2 + 3?'}
>>> build_prompt("x")[0]["content"].splitlines()[0]
'You are a mathematical reasoning assistant.'
"""

from dataclasses import dataclass, field

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


def build_prompt(question: str, system_prompt: str | None = None) -> list[Message]:
    """The chat messages for one question: the system prompt (None: the notebook's; "": none), then
    the question as the user turn.

    >>> build_prompt("Reverse abc", system_prompt="")
    [{'role': 'user', 'content': 'Reverse abc'}]
    """
    system_prompt = SYSTEM_PROMPT if system_prompt is None else system_prompt
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*system, {"role": "user", "content": question}]


@dataclass(frozen=True)
class Problem:
    """One dataset row as both services use it: the prompt as chat messages, and every other
    column, which reaches the reward functions as keyword arguments (TRL's convention). GSM8K and
    ``arithmetic:D`` rows carry ``question``, ``answer`` (normalised, e.g. ``"1080"``) and
    ``solution`` (the worked solution); the maths metrics apply where a row has an ``answer``.

    >>> problem = Problem(build_prompt("2 + 3?"), {"answer": 5})
    >>> problem.question, problem.answer, problem.solution
    ('2 + 3?', '5', None)
    """

    prompt: list[Message]
    columns: dict = field(default_factory=dict)

    @property
    def question(self) -> str:
        """The last user turn's text."""
        return next(m["content"] for m in reversed(self.prompt) if m["role"] == "user")

    @property
    def answer(self) -> str | None:
        """The ``answer`` column as text (what strict and lenient accuracy compare with), or None."""
        answer = self.columns.get("answer")
        return None if answer is None else str(answer)

    @property
    def solution(self) -> str | None:
        return self.columns.get("solution")


def format_reference_completion(reasoning: str, answer: str) -> str:
    """A completion in the target format, used by the supervised format warm-up.

    >>> print(format_reference_completion("2 + 3 = 5", "5"))
    <start_working_out>
    2 + 3 = 5
    <end_working_out>
    <SOLUTION>5</SOLUTION>
    """
    return f"{REASONING_START}\n{reasoning}\n{REASONING_END}\n{SOLUTION_START}{answer}{SOLUTION_END}"
