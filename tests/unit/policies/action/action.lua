-- Reports what it sees of the action, as one string.
function decide(action)
  local i = action.input
  local parts = {
    action.connector, action.action, action.effect,
    math.type(action.priority), math.type(action.proposer.confidence),
    tostring(action.proposer.confidence),
    i.nested.list[1], i.nested.list[2], tostring(#i.nested.list),
    tostring(i.flag), tostring(i.off), tostring(i.nothing),
    tostring(i.deep.a.b.c), tostring(i.holes[1]), tostring(i.holes[2]), tostring(i.holes[3]),
    tostring(#i.text),
  }
  return { verdict = "allow", rule = "action_seen", reason = table.concat(parts, ",") }
end
