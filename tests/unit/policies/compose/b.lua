-- Votes whatever action.input.b says (absent: abstain), for the composition tests.
-- action.input.fail / loop / memory == "b": raise an error / run forever / eat memory.
local me = "b"

function decide(action, ctx)
  local input = action.input
  if input.fail == me then
    error("broke on purpose")
  elseif input.loop == me then
    while true do end
  elseif input.memory == me then
    local t = {}
    while true do
      t[#t + 1] = string.rep("x", 1000) .. #t
    end
  end
  return input[me]
end
