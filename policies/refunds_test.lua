-- refunds_test.lua - what refunds.lua decides, together with the other policies here.
--
-- Each test is one action and the decision it must get from the whole policy set. Tests run at
-- a Wednesday noon (UTC) unless they give `now`. Run: aioctl policy test policies

-- The refund most tests start from: 40.00 for order 1042, proposed by a confident AI.
local function refund(amount, confidence)
  return {
    connector = "shop", action = "refund", effect = "irreversible",
    input = { order = "1042", amount = amount },
    proposer = { kind = "ai", model = "support-bot", confidence = confidence or 0.95 },
    submitter = "support-bot",
  }
end

tests = {
  { name = "small refund is allowed",
    action = refund(40),
    expect = { verdict = "allow", rule = "refund_small", policy = "refunds.lua" } },

  { name = "exactly 100 is still small",
    action = refund(100),
    expect = { verdict = "allow", rule = "refund_small" } },

  { name = "above 100 needs finance, and not the submitter",
    action = refund(100.01),
    expect = { verdict = "approve", rule = "refund_large", roles = { "finance" },
               four_eyes = true, summary = "Refund 100.01 for order 1042" } },

  { name = "exactly 10000 still only needs approval",
    action = refund(10000),
    expect = { verdict = "approve", rule = "refund_large", roles = { "finance" } } },

  { name = "above 10000 is denied",
    action = refund(10000.5),
    expect = { verdict = "deny", rule = "refund_too_large" } },

  { name = "an unsure AI needs finance even for a small refund",
    action = refund(20, 0.6),
    expect = { verdict = "approve", rule = "refund_unsure", roles = { "finance" },
               four_eyes = true } },

  { name = "a very unsure AI is denied by default.lua",
    action = refund(20, 0.1),
    expect = { verdict = "deny", rule = "low_confidence", policy = "default.lua" } },

  { name = "a refund by a person (no confidence) is judged by amount only",
    action = {
      connector = "shop", action = "refund", effect = "irreversible",
      input = { order = "77", amount = 15 },
      proposer = { kind = "human" }, submitter = "alice",
    },
    expect = { verdict = "allow", rule = "refund_small" } },

  { name = "a refund without an amount is denied",
    action = { connector = "shop", action = "refund", effect = "irreversible",
               input = { order = "1042" } },
    expect = { verdict = "deny", rule = "refund_amount_invalid" } },

  { name = "a negative amount is denied",
    action = refund(-5),
    expect = { verdict = "deny", rule = "refund_amount_invalid" } },

  { name = "an amount given as text is denied",
    action = refund("40"),
    expect = { verdict = "deny", rule = "refund_amount_invalid" } },

  { name = "a small refund on a Saturday night needs approval (business_hours.lua)",
    action = refund(40),
    now = "2026-01-10T22:00:00Z",
    expect = { verdict = "approve", rule = "outside_business_hours", roles = {} } },

  { name = "a large refund on a Saturday night still needs finance",
    action = refund(250),
    now = "2026-01-10T22:00:00Z",
    expect = { verdict = "approve", roles = { "finance" }, four_eyes = true,
               summary = "Refund 250.00 for order 1042" } },

  -- refunds.lua covers only shop.refund: for anything else its decide does not run.
  { name = "a refund on another connector is not refunds.lua's (covers): the default decides",
    action = { connector = "tickets", action = "refund", effect = "write",
               input = { order = "1042", amount = 20000 } },
    expect = { verdict = "approve", rule = "default" } },

  { name = "another shop action with an amount is not refunds.lua's either",
    action = { connector = "shop", action = "refund_quote", effect = "read",
               input = { order = "1042", amount = -5 } },
    expect = { verdict = "allow", rule = "default" } },
}
