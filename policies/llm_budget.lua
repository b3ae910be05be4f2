-- llm_budget.lua - a daily budget on what the "llm" connector's calls cost.
--
-- Connectors report what each call cost ("cost": {"USD": 0.012, "tokens": 340} on the
-- action). The journal keeps the counter below: the USD that calls of the llm connector cost
-- in the last 24 hours, whatever became of them (a call that failed or was cancelled after it
-- ran was still paid for), each amount at the time it was recorded. Once that reaches the
-- budget, finance decides whether more may be spent today.
--
-- Covers every action of the llm connector (covers below). Every other action: no opinion.
--
-- Rules:
--   llm_budget_reached  the llm connector's calls cost DAILY_BUDGET_USD or more in the last 24
--                       hours: every new llm action needs finance's approval (the summary
--                       shows the spend so far)
--   (nothing else: under the budget this file has no opinion, and the other files and the
--   defaults decide)
--
-- The spend only counts calls that have finished, so the calls already allowed when the
-- budget is reached may take it a little past it: keep DAILY_BUDGET_USD below the real limit.
--
-- Tests: llm_budget_test.lua (run them with `aioctl policy test policies`).

local CONNECTOR = "llm"
local DAILY_BUDGET_USD = 50     -- spend per rolling 24 hours made without a human
local APPROVER_ROLES = { "finance" }

covers = { CONNECTOR }          -- decide only runs for the llm connector's actions

counters = {
  -- what the llm connector's calls (any action, any outcome) cost in USD in the last 24 hours
  spend_24h = { connector = "llm", action = "*", cost = "USD", window = "24h" },
}

function decide(action, ctx)
  if action.connector ~= CONNECTOR then
    return nil
  end
  local spent = ctx.counter("spend_24h")
  if spent >= DAILY_BUDGET_USD then
    return {
      verdict = "approve",
      rule = "llm_budget_reached",
      reason = string.format("llm calls cost %.2f USD in the last 24 hours, at or above the budget of %.2f",
                             spent, DAILY_BUDGET_USD),
      roles = APPROVER_ROLES,
      summary = string.format("%s.%s over budget: llm calls cost %.2f USD in the last 24 h (budget %.2f)",
                              CONNECTOR, tostring(action.action), spent, DAILY_BUDGET_USD),
    }
  end
  return nil
end
