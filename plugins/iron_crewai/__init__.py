"""iron-sdk for CrewAI: every model call of a crew inside ``@protect_agent`` is governed.

Activated by the ``iron_crewai.plugin`` entry point as soon as a protected function runs
with crewai imported; the user adds no callback, hook or wrapper. See
:mod:`iron_crewai.llm` for how a call flows and :mod:`iron_crewai.tools` for tool audit.
"""
