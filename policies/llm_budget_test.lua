-- llm_budget_test.lua - the daily budget on llm calls, with the spend given per test.
--
-- `counters` sets what ctx.counter returns in a test (a declared counter not given reads 0).

local function llm(name, effect)
  return {
    connector = "llm", action = name, effect = effect or "read",
    input = { prompt = "Summarise ticket 1042" },
    proposer = { kind = "ai", model = "support-bot", confidence = 0.95 },
    submitter = "support-bot",
  }
end

tests = {
  { name = "under the budget an llm read is allowed (the default for reads)",
    action = llm("complete"), counters = { spend_24h = 49.99 },
    expect = { verdict = "allow", rule = "default" } },

  { name = "on a quiet day too",
    action = llm("embed"),
    expect = { verdict = "allow", rule = "default" } },

  { name = "at the budget every llm action needs finance, with the spend in the summary",
    action = llm("complete"), counters = { spend_24h = 50 },
    expect = { verdict = "approve", rule = "llm_budget_reached", policy = "llm_budget.lua",
               roles = { "finance" },
               summary = "llm.complete over budget: llm calls cost 50.00 USD in the last 24 h (budget 50.00)" } },

  { name = "above the budget, any action of the connector",
    action = llm("embed"), counters = { spend_24h = 51 },
    expect = { verdict = "approve", rule = "llm_budget_reached", roles = { "finance" },
               summary = "llm.embed over budget: llm calls cost 51.00 USD in the last 24 h (budget 50.00)" } },

  { name = "a write above the budget needs finance rather than anyone",
    action = llm("send_reply", "write"), counters = { spend_24h = 73.5 },
    expect = { verdict = "approve", rule = "llm_budget_reached", roles = { "finance" } } },

  { name = "an unsure proposer is still denied above the budget",
    action = { connector = "llm", action = "complete", effect = "read",
               proposer = { kind = "ai", confidence = 0.1 } },
    counters = { spend_24h = 80 },
    expect = { verdict = "deny", rule = "low_confidence" } },

  { name = "other connectors are not held by the llm budget",
    action = { connector = "echo", action = "echo", effect = "read", input = { message = "hi" } },
    counters = { spend_24h = 5000 },
    expect = { verdict = "allow", rule = "echo_allowed" } },
}
