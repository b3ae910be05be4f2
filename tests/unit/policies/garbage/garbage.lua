-- Invalid results, chosen by action.input.kind.
local results = {
  number = function() return 42 end,
  string = function() return "allow" end,
  boolean = function() return true end,
  func = function() return function() end end,
  empty = function() return {} end,
  maybe = function() return { verdict = "maybe" } end,
  upper = function() return { verdict = "ALLOW" } end,
  nul = function() return { verdict = "allow\0x" } end,
  verdict_number = function() return { verdict = 1 } end,
  bad_reason = function() return { verdict = "allow", reason = 5 } end,
  bad_rule = function() return { verdict = "deny", rule = {} } end,
  inherited = function() return setmetatable({}, { __index = { verdict = "allow" } }) end,
  error_string = function() error("boom") end,
  error_table = function() error({}) end,
  long_reason = function()
    return { verdict = "allow", reason = string.rep("r", 2000), rule = string.rep("u", 500) }
  end,
}

function decide(action)
  return results[action.input.kind]()
end
