// ESM entry: the same objects as the CommonJS entry, so `import` and `require` share one addon.
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const toklock = require('./index.js')

export const { start, version, Server } = toklock
export default toklock
