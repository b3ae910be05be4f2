-- refunds.lua - how much the shop may refund on its own, and when finance must approve.
--
-- Covers one action: shop.refund (covers below), whose input looks like
--   { order = "1042", amount = 120.50, reason = "damaged in transit" }
-- with amount in the shop's currency. Every other action: no opinion (the engine does not
-- even run decide for it; the check at the top of decide says the same).
--
-- Rules, checked in this order (the first that matches decides):
--   refund_amount_invalid  the amount is missing, not a number, or not above zero: deny
--   refund_too_large       more than DENY_ABOVE: deny (do it by hand in the shop's back office)
--   refund_large           more than APPROVAL_ABOVE: finance approves, not the submitter
--   refund_unsure          the AI that proposed it is less sure than MIN_CONFIDENCE: finance
--                          approves
--   refund_small           anything else: allowed
--
-- Tests: refunds_test.lua (run them with `aioctl policy test policies`).

local APPROVAL_ABOVE = 100    -- refunds above this need finance's approval
local DENY_ABOVE = 10000      -- refunds above this are never made by aiorun
local MIN_CONFIDENCE = 0.8    -- an AI proposer less sure than this needs finance's approval
local APPROVER_ROLES = { "finance" }

covers = { "shop.refund" }    -- decide only runs for these actions

local function approve_by_finance(rule, reason, input, amount)
  return {
    verdict = "approve",
    rule = rule,
    reason = reason,
    roles = APPROVER_ROLES,
    four_eyes = true,  -- whoever submitted the refund may not approve it
    summary = string.format("Refund %.2f for order %s", amount, tostring(input.order or "?")),
  }
end

function decide(action, ctx)
  if action.connector ~= "shop" or action.action ~= "refund" then
    return nil
  end

  local input = type(action.input) == "table" and action.input or {}
  local amount = input.amount

  if type(amount) ~= "number" or amount ~= amount or amount <= 0 then
    return {
      verdict = "deny",
      rule = "refund_amount_invalid",
      reason = "a refund must name an amount above zero, got " .. tostring(amount),
    }
  end

  if amount > DENY_ABOVE then
    return {
      verdict = "deny",
      rule = "refund_too_large",
      reason = string.format("refunds above %d are made by hand, not by aiorun (%.2f asked)",
                             DENY_ABOVE, amount),
    }
  end

  if amount > APPROVAL_ABOVE then
    return approve_by_finance("refund_large",
      string.format("refunds above %d need finance's approval (%.2f asked)", APPROVAL_ABOVE, amount),
      input, amount)
  end

  local proposer = action.proposer
  local confidence = type(proposer) == "table" and proposer.confidence
  if type(confidence) == "number" and confidence < MIN_CONFIDENCE then
    return approve_by_finance("refund_unsure",
      string.format("the proposer is only %.2f sure (below %.2f); finance must check the refund",
                    confidence, MIN_CONFIDENCE),
      input, amount)
  end

  return {
    verdict = "allow",
    rule = "refund_small",
    reason = string.format("refunds up to %d may be made without approval", APPROVAL_ABOVE),
  }
end
