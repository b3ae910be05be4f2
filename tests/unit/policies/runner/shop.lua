-- The policy the runner tests check: shop actions by amount; "when" reports ctx.now().
function decide(action, ctx)
  if action.connector ~= "shop" then
    return nil
  end
  local amount = type(action.input) == "table" and action.input.amount or 0
  if action.action == "when" then
    return { verdict = "allow", rule = "when", reason = tostring(ctx.now()) }
  end
  if amount > 100 then
    return { verdict = "approve", rule = "big", reason = "over 100", roles = { "finance", "lead" },
             four_eyes = true, summary = "Refund " .. amount }
  end
  return { verdict = "allow", rule = "small", reason = "up to 100" }
end
