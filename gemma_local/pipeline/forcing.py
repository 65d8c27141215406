"""A server policy that makes the model take a tool round trip: ``serve --force-tool NAME``.

A small model (the embedded 270M) seldom chooses to call a tool, and the coding agents leave
that choice to it (``tool_choice`` auto) with no useful output cap, so a real client's turn on
it never reaches its tools. With this policy, a request that offers the tool ``NAME``, leaves
the choice at ``auto`` and whose conversation ends with the user speaking (not with a tool
result) gets exactly one call to ``NAME``, forced as a named ``tool_choice`` would force it.
Once the result is back the model answers in text: its answer ends where it would open another
call (a small model, left free, calls tools again and again, and an agent without a turn limit
never ends its turn), so every user turn makes one round trip and then ends.

"The user spoke last" means: since the last assistant message there is a user message and no
tool result. System or developer messages may follow the user's (Claude Code sends one after
its first user message), and text a client adds beside a tool result (Anthropic puts both in
one user message) does not make a new user turn.

This changes what the model may write (its grammar), never the prompt: the tool instructions
do not depend on the tool choice, so a forced turn reuses the cache like any other.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from gemma_local.engine.tools import CALL_FENCE, NamedToolChoice
from gemma_local.pipeline.request import PipelineRequest

#: Where an answer after the forced round trip ends: the opening of another call.
ANSWER_STOP = f"```{CALL_FENCE}"


@dataclass(frozen=True)
class ToolForcing:
    """Force one call to ``tool`` at the start of every user turn that offers it.

    Args:
        tool: the function's name as the request offers it (None: the policy is off).
    """

    tool: str | None = None

    def apply(self, request: PipelineRequest) -> PipelineRequest:
        """``request`` with its call to :attr:`tool` forced, when the policy applies to it."""
        if not self.applies_to(request):
            return request
        return replace(request, tool_choice=NamedToolChoice(self.tool or ""), parallel_tool_calls=False)

    def answer_stops(self, request: PipelineRequest) -> tuple[str, ...]:
        """Stop sequences of the answer after the forced call's result: the opening of another
        call (the tools stay offered, so the prompt, and the cache, stay the same)."""
        if self.tool is None or request.tool_choice != "auto" or not any(t.name == self.tool for t in request.tools):
            return ()
        for message in reversed(request.generation.messages):
            if message.role == "assistant":
                return ()
            if message.role == "tool":
                return (ANSWER_STOP,)
        return ()

    def applies_to(self, request: PipelineRequest) -> bool:
        """The tool is offered, the model may choose, and the user spoke last."""
        if self.tool is None or request.tool_choice != "auto":
            return False
        if request.output_format is not None and request.output_format.type != "text":
            return False  # a structured answer was asked for, not a call
        if not any(t.name == self.tool for t in request.tools):
            return False
        user_spoke = False
        for message in reversed(request.generation.messages):
            if message.role == "assistant":
                break
            if message.role == "tool":
                return False
            user_spoke = user_spoke or message.role == "user"
        return user_spoke
