// Types for the ESM entry (index.mjs): the same API as the CommonJS entry, plus a default export.
import * as toklock from './index.js'

export * from './index.js'
export default toklock
