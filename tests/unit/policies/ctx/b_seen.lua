-- Runs after a_ctx.lua in the same decision: its ctx must be a fresh one.
function decide(action, ctx)
  local list = {}
  for k in pairs(ctx) do
    list[#list + 1] = tostring(k)
  end
  table.sort(list)
  return { verdict = "allow", rule = "seen",
           reason = tostring(rawget(ctx, "x")) .. "," .. tostring(ctx.x) .. "," .. table.concat(list, " ") }
end
