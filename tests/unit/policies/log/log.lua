function decide(action)
  local input = action.input
  for i = 1, input.count or 0 do
    log("line", i, true, nil)
  end
  if input.long then log(string.rep("a", 2000)) end
  if input.newline then log("one\ntwo") end
  return nil
end
