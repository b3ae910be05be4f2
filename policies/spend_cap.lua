-- spend_cap.lua - a daily cap on what the shop refunds on its own.
--
-- refunds.lua judges each refund alone; this file looks at the total. The journal keeps the
-- counter below (refunds approved or in flight in the last 24 hours, failed and rejected ones
-- not included), so ctx.counter("refunded_24h") is cheap and two refunds decided at the same
-- moment cannot both slip under the cap: the second one is decided again with the first
-- counted.
--
-- Covers one action: shop.refund (covers below). Every other action: no opinion.
--
-- Rules:
--   spend_cap_reached  this refund would take the 24-hour total above DAILY_CAP: finance
--                      approves it (the summary shows the total so far)
--   (nothing else: below the cap this file has no opinion and refunds.lua decides)
--
-- Tests: spend_cap_test.lua (run them with `aioctl policy test policies`).

local DAILY_CAP = 500            -- refunds per rolling 24 hours made without a human
local APPROVER_ROLES = { "finance" }

covers = { "shop.refund" }       -- decide only runs for these actions

counters = {
  -- the sum of input.amount of shop.refund actions approved or in flight in the last 24 hours
  refunded_24h = { connector = "shop", action = "refund", sum = "amount", window = "24h" },
}

function decide(action, ctx)
  if action.connector ~= "shop" or action.action ~= "refund" then
    return nil
  end
  local input = type(action.input) == "table" and action.input or {}
  local amount = input.amount
  if type(amount) ~= "number" or amount ~= amount or amount <= 0 then
    return nil  -- refunds.lua denies it
  end

  local so_far = ctx.counter("refunded_24h")
  if so_far + amount > DAILY_CAP then
    return {
      verdict = "approve",
      rule = "spend_cap_reached",
      reason = string.format("refunds in the last 24 hours would reach %.2f, above the cap of %d",
                             so_far + amount, DAILY_CAP),
      roles = APPROVER_ROLES,
      four_eyes = true,
      summary = string.format("Refund %.2f for order %s (refunded in the last 24 h: %.2f of %d)",
                              amount, tostring(input.order or "?"), so_far, DAILY_CAP),
    }
  end
  return nil
end
