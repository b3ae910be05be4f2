function decide(action)
  local x = 1
  if x = 2 then
    return nil
  end
end
