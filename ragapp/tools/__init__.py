"""Tools for agents, one LangChain tool per module."""

# The tools an agent can be given, in the order they are offered (light to import: the CLI lists them).
AGENT_TOOLS = ("search_documents", "sql_query", "calculator")
