// ESLint for the chat page's scripts (browser modules) and these tests (node).
// Run from the repository root: `eslint -c tests/browser/eslint.config.mjs`.
import js from '@eslint/js';
import globals from 'globals';

export default [
  { ignores: ['tests/browser/node_modules/**', 'target/**'] },
  {
    files: ['assets/chat/**/*.js'],
    ...js.configs.recommended,
    languageOptions: {
      ecmaVersion: 2022,
      sourceType: 'module',
      globals: { ...globals.browser },
    },
    rules: {
      ...js.configs.recommended.rules,
      eqeqeq: 'error',
      'no-var': 'error',
      'prefer-const': 'error',
      'no-implied-eval': 'error',
      'no-eval': 'error',
      'no-new-func': 'error',
      'no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
    },
  },
  {
    files: ['tests/browser/**/*.mjs'],
    ...js.configs.recommended,
    languageOptions: {
      ecmaVersion: 2022,
      sourceType: 'module',
      // Functions passed to page.evaluate and waitForFunction run in the page.
      globals: { ...globals.node, ...globals.browser },
    },
    rules: {
      ...js.configs.recommended.rules,
      eqeqeq: 'error',
      'prefer-const': 'error',
    },
  },
];
