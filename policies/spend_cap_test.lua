-- spend_cap_test.lua - the daily refund cap, with the counter's value given per test.
--
-- `counters` sets what ctx.counter returns in a test (a declared counter not given reads 0).

local function refund(amount)
  return {
    connector = "shop", action = "refund", effect = "irreversible",
    input = { order = "1042", amount = amount },
    proposer = { kind = "ai", model = "support-bot", confidence = 0.95 },
    submitter = "support-bot",
  }
end

tests = {
  { name = "a small refund on a quiet day is allowed (refunds.lua decides)",
    action = refund(40),
    expect = { verdict = "allow", rule = "refund_small", policy = "refunds.lua" } },

  { name = "a small refund that stays under the cap is allowed",
    action = refund(40), counters = { refunded_24h = 460 },
    expect = { verdict = "allow", rule = "refund_small" } },

  { name = "a small refund that would pass the cap needs finance",
    action = refund(40), counters = { refunded_24h = 460.01 },
    expect = { verdict = "approve", rule = "spend_cap_reached", policy = "spend_cap.lua",
               roles = { "finance" }, four_eyes = true,
               summary = "Refund 40.00 for order 1042 (refunded in the last 24 h: 460.01 of 500)" } },

  { name = "once the cap is reached every refund needs finance",
    action = refund(1), counters = { refunded_24h = 500 },
    expect = { verdict = "approve", rule = "spend_cap_reached" } },

  { name = "a refund too large to make is still denied above the cap",
    action = refund(20000), counters = { refunded_24h = 900 },
    expect = { verdict = "deny", rule = "refund_too_large" } },

  { name = "other actions are not capped",
    action = { connector = "echo", action = "echo", effect = "read", input = { message = "hi" } },
    counters = { refunded_24h = 5000 },
    expect = { verdict = "allow" } },
}
